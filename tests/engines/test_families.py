"""Every LLM family through both engines, against what `model.chat` does.

Per family (one tiny twin, one vLLM engine and one HF reference engine, shared by the
module): on 12 inputs (images, multi-image, video, text)
- the prompt ids vLLM runs equal model.chat's: the checkpoint's conversation.py run as
  model.chat runs it, tokenized like the card (slow sentencepiece classes where those
  differ), and equal the twin's own chat template rendered by transformers;
- greedy tokens are the same in vLLM and the HF reference;
- both return the answer model.chat's post-processing gives for those tokens.
"""

import pytest

from internvl_batch.engines.base import request_stop_token_ids
from internvl_batch.model.prompts import IMG_CONTEXT
from tests.support import model_chat
from tests.support.engines import GREEDY_16, tiny_model_config
from tests.support.families import FAMILY_NAMES, INPUTS, Oracle, checkpoint_conversation, render_chat_template

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request, twin_dirs, tiny_model_dir):
    name = request.param
    if name == "qwen2":  # the session's engines already run this twin
        yield name, tiny_model_dir, request.getfixturevalue("vllm_engine"), request.getfixturevalue("hf_engine")
        return
    from internvl_batch.engines.hf import HFEngine
    from internvl_batch.engines.vllm.engine import VLLMEngine

    config = tiny_model_config(twin_dirs[name])
    vllm, hf = VLLMEngine(config, GREEDY_16), HFEngine(config, GREEDY_16)
    yield name, twin_dirs[name], vllm, hf
    vllm.shutdown()
    hf.shutdown()


@pytest.fixture(scope="module")
def run(family):
    name, model_dir, vllm, hf = family
    requests = [i.request(vllm.template) for i in INPUTS]
    return {
        "name": name,
        "dir": model_dir,
        "requests": requests,
        "vllm": vllm.generate(requests),
        "hf": hf.generate(requests),
        "vllm_prompt_ids": [vllm.prompt_token_ids(r) for r in requests],
        "hf_engine": hf,
        "vllm_engine": vllm,
    }


def test_engines_resolve_the_checkpoint_template(run):
    from internvl_batch.devtools.tiny_model import FAMILIES

    expected = FAMILIES[run["name"]].template
    assert run["vllm_engine"].template == run["hf_engine"].template == expected


def test_vllm_runs_model_chat_prompt_ids(run):
    oracle = Oracle(run["name"], run["dir"])
    template = run["vllm_engine"].template
    for inp, req, vllm_ids in zip(INPUTS, run["requests"], run["vllm_prompt_ids"]):
        conv = checkpoint_conversation(run["dir"], template.name)
        query = model_chat.chat_query(conv, inp.card_question(), list(req.prompt.tiles_per_image))
        expected = oracle.encode(query)
        assert vllm_ids == expected, inp.id
        assert run["hf_engine"].checkpoint.tokenizer.prompt_ids(req.prompt).ids == expected, inp.id
        assert vllm_ids.count(oracle.encode(IMG_CONTEXT)[-1]) == 256 * sum(req.prompt.tiles_per_image)


def test_prompt_ids_equal_the_twins_own_chat_template(run):
    oracle = Oracle(run["name"], run["dir"])
    for inp, req, vllm_ids in zip(INPUTS, run["requests"], run["vllm_prompt_ids"]):
        question = inp.card_question()
        if req.prompt.tiles_per_image and "<image>" not in question:
            question = "<image>\n" + question
        text = render_chat_template(run["dir"], question)
        for n in req.prompt.tiles_per_image:
            text = text.replace("<image>", "<img>" + IMG_CONTEXT * 256 * n + "</img>", 1)
        assert vllm_ids == oracle.encode(text), inp.id


def test_vllm_and_hf_choose_the_same_tokens(run):
    v, h = run["vllm"], run["hf"]
    assert all(r.status == "ok" for r in v + h), [(r.id, r.error) for r in v + h if r.status != "ok"]
    mismatches = [(a.id, a.token_ids, b.token_ids) for a, b in zip(v, h) if a.token_ids != b.token_ids]
    assert not mismatches
    assert [a.num_prompt_tokens for a in v] == [b.num_prompt_tokens for b in h]
    assert len({a.token_ids for a in v}) >= len(v) - 2  # the inputs really steer the output
    assert all(len(a.token_ids) == 16 or a.finish_reason == "stop" for a in v)


def test_answers_are_model_chat_post_processing_of_the_tokens(run):
    oracle = Oracle(run["name"], run["dir"])
    sep = checkpoint_conversation(run["dir"], run["vllm_engine"].template.name).sep
    for a, b in zip(run["vllm"], run["hf"]):
        expected = model_chat.chat_answer(oracle.decode(a.token_ids), sep)
        assert a.text == expected, a.id
        assert b.text == expected, b.id


def test_generation_stops_at_the_template_separator_only(run):
    vllm, hf = run["vllm_engine"], run["hf_engine"]
    req = run["requests"][0]
    sep_id = vllm.tokenizer.get_vocab()[vllm.template.sep.strip()]
    params = vllm.sampling_params(req)
    assert list(params.stop_token_ids) == [sep_id]
    assert params.ignore_eos  # not the tokenizer's EOS, which model.chat does not stop at
    assert request_stop_token_ids(hf.tokenizer.get_vocab(), req.prompt) == [sep_id]


def test_json_schema_output_ends_and_parses(run):
    """The demo's and label-vqa's JSON tasks: the grammar's end (the tokenizer's EOS) stops it."""
    import json

    from internvl_batch.config import SamplingConfig
    from internvl_batch.engines.base import EngineRequest

    schema = {"type": "object", "properties": {"animal": {"type": "string", "enum": ["cat", "dog"]}},
              "required": ["animal"], "additionalProperties": False}  # fmt: skip
    req = run["requests"][0]
    labelled = EngineRequest(id="json", prompt=req.prompt, tiles=req.tiles, sampling=SamplingConfig(max_tokens=48,
                             json_schema=schema))  # fmt: skip
    (res,) = run["vllm_engine"].generate([labelled])
    assert res.status == "ok" and res.finish_reason == "stop", (res.error, res.text)
    assert json.loads(res.text)["animal"] in ("cat", "dog")


def test_verify_finds_every_answer_identical_to_the_reference(run):
    """`verify`'s comparison of these vLLM answers with the HF reference engine run as
    model.chat runs the checkpoint (its template, its RoPE, the slow tokenizer's ids)."""
    from internvl_batch.preflight.reference import HFReference
    from internvl_batch.preflight.verify import Case, compare_cases, run_reference

    ref = HFReference(tiny_model_config(run["dir"]), GREEDY_16)
    try:
        cases = [Case(i.id, "q", job=req, question=i.question) for i, req in zip(INPUTS, run["requests"])]
        job = dict(enumerate(zip(run["vllm"], run["vllm_prompt_ids"])))
        verdicts = compare_cases(cases, job, run_reference(ref, cases, job), ref.token_name)
    finally:
        ref.shutdown()
    assert [c.verdict for c in verdicts] == ["identical"] * len(INPUTS), [c.detail for c in verdicts]
