"""What the inference stage asks of a row for a task: its prompt filled in from the row's
columns, and an OpenAI batch line's own sampling and system message over the task's."""

import json

import pytest

from internvl_batch.config import TaskConfig
from internvl_batch.job.stages.inference import InferenceStage


@pytest.fixture
def stage():
    s = object.__new__(InferenceStage)  # no engine: _row_request needs none
    s._samplings = {}
    return s


def row(values=None, request=None, question=None):
    return {"question": question, "prompt_values": json.dumps(values) if values else None,
            "request": json.dumps(request) if request else None}  # fmt: skip


def test_a_template_filled_from_the_row(stage):
    task = TaskConfig(name="ask", prompt="Is it a {label}?", system_message="S")
    assert stage._row_request(row({"label": "cat"}), task) == ("Is it a cat?", task.sampling, "S")
    with pytest.raises(ValueError, match="column 'label'"):
        stage._row_request(row({"label": None}), task)


def test_a_lines_own_sampling_over_the_tasks(stage):
    task = TaskConfig(name="chat", use_row_question=True, sampling={"max_tokens": 99, "top_p": 0.5})
    own = {"system_message": "Be brief.", "sampling": {"temperature": 0.7, "n": 2}}
    q, sampling, system = stage._row_request(row(request=own, question="Why?"), task)
    assert (q, system, sampling.temperature, sampling.n, sampling.max_tokens, sampling.top_p) == (
        "Why?", "Be brief.", 0.7, 2, 99, 0.5)  # fmt: skip
    again = stage._row_request(row(request=own, question="Other?"), task)[1]
    assert again is sampling  # one object per distinct config: the engine caches its params by it
    with pytest.raises(ValueError, match="n=2 with temperature=0"):
        stage._row_request(row(request={"sampling": {"n": 2}}, question="Q"), task)
    with pytest.raises(ValueError, match="max_tokens"):
        stage._row_request(row(request={"sampling": {"max_tokens": -1}}, question="Q"), task)
