"""OpenAI Batch API request lines -> rows: custom_id, images (URLs, data URIs), the question,
the line's own system message and sampling; what can't be honoured is refused by name."""

from __future__ import annotations

import json

import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import read_manifest
from tests.support.datasets import batch_line, data_uri, image_bytes

PNG = image_bytes(1, (64, 48))


def rows(tmp_path, lines):
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    return read_manifest(InputConfig(path=str(tmp_path / "batch.jsonl"), format="openai_batch"))


def test_requests_become_rows(tmp_path):
    parts = [{"type": "image_url", "image_url": {"url": "s3://b/a.jpg", "detail": "high"}},
             {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": data_uri(PNG)}},
             {"type": "text", "text": "Answer briefly."}]  # fmt: skip
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    [a, b, c] = rows(tmp_path, [
        batch_line("req-1", parts, system="You label images.", max_completion_tokens=20, temperature=0.7, top_p=0.9,
                   seed=3, n=2, stop="END", response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                                                    "schema": schema}}),
        batch_line("req-2", [{"type": "video_url", "video_url": {"url": "s3://b/v.mp4"}}, {"type": "text", "text": "Hm?"}],
                   max_tokens=5),
        batch_line("req-3", [{"type": "image_url", "image_url": {"url": "s3://b/c.jpg"}}]),
    ])  # fmt: skip
    assert (a.id, a.error, a.images, a.image_bytes) == ("req-1", None, ["s3://b/a.jpg", "req-1#image-1"], [None, PNG])
    assert a.question == "What is it?\nAnswer briefly."
    assert json.loads(a.request) == {
        "system_message": "You label images.",
        "sampling": {"max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "seed": 3, "n": 2, "stop": ["END"],
                     "json_schema": schema},
    }  # fmt: skip
    assert (b.video, b.question, json.loads(b.request)) == ("s3://b/v.mp4", "Hm?", {"sampling": {"max_tokens": 5}})
    assert (c.error, c.question, c.request) == (None, None, None)  # no text: the task says it has no question


@pytest.mark.parametrize(
    "line,message",
    [
        (batch_line("x", "hi", logprobs=True, tools=[]), "body.logprobs, body.tools not supported"),
        (batch_line("x", [{"type": "input_audio", "input_audio": {}}]), "content[0].type='input_audio'"),
        (
            json.dumps(
                {
                    "custom_id": "x",
                    "body": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                }
            ),
            "one optional system message then one user message",
        ),  # fmt: skip
        (json.dumps({"custom_id": "x", "url": "/v1/embeddings", "body": {"messages": []}}), "only POST /v1/chat"),
        (json.dumps({"custom_id": "x", "body": {}, "extra": 1}), "extra: not a field"),
        (batch_line("x", "just text"), "text-only requests are not supported"),
        (
            batch_line("x", [{"type": "image_url", "image_url": {"url": "a"}}], response_format={"type": "xml"}),
            "response_format.type='xml'",
        ),
        (batch_line(None, [{"type": "image_url", "image_url": {"url": "a"}}]), "missing 'custom_id'"),
    ],
)
def test_what_a_line_cannot_ask_is_refused_by_name(tmp_path, line, message):
    [ok, bad] = rows(tmp_path, [batch_line("fine", [{"type": "image_url", "image_url": {"url": "a.jpg"}}]), line])
    assert ok.error is None
    assert bad.error is not None and message in bad.error, bad.error
    assert bad.id == ("x" if '"custom_id"' in line else f"{tmp_path / 'batch.jsonl'}#2")
