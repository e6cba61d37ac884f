"""vLLM against the card's LongRoPE rule, on the phi3 twin switching factors at 64 tokens (so
sequences beyond are cheap): with long factors (max_model_len above 64, as vLLM runs Phi-3
whenever max_model_len exceeds original_max_position_embeddings), prompts beyond 64 tokens
get the card's answers, and `verify` names the first differing token of prompts within it,
where the card uses short factors. Within the original length with short factors: the phi3
twin of test_families.py (max_model_len 4096)."""

import pytest

from internvl_batch.engines.base import EngineRequest
from internvl_batch.model.prompts import build_prompt
from tests.support.engines import GREEDY_16, image_request, tiny_model_config
from tests.support.families import SHORT_ORIGINAL, twin_with_llm_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engines(twin_dirs, tmp_path_factory):
    from internvl_batch.engines.vllm.engine import VLLMEngine
    from internvl_batch.preflight.reference import HFReference

    short = twin_with_llm_config(twin_dirs["phi3"], tmp_path_factory.mktemp("rope") / "phi3",
                                 original_max_position_embeddings=SHORT_ORIGINAL)  # fmt: skip
    model = tiny_model_config(short, max_model_len=512, rope_factors="long")
    vllm = VLLMEngine(model, GREEDY_16)
    ref = HFReference(model, GREEDY_16)
    yield vllm, ref
    vllm.shutdown()
    ref.shutdown()


def _verdicts(engines, requests):
    from internvl_batch.preflight.verify import Case, compare_cases, run_reference

    vllm, ref = engines
    cases = [Case(r.id, "q", job=r, reference=r) for r in requests]
    job = dict(enumerate(zip(vllm.generate(requests), [vllm.prompt_token_ids(r) for r in requests])))
    for res, _ in job.values():
        assert res.status == "ok", res.error
    return compare_cases(cases, job, run_reference(ref, cases, job), ref.token_name)


def test_prompts_beyond_the_original_length_get_the_cards_answers(engines):
    vllm, _ = engines
    requests = [
        EngineRequest(id="text-long", prompt=build_prompt("Describe the sea. " * 8, template=vllm.template)),
        image_request("image", [((640, 480), 2)], "Describe the image.", seed=3, template=vllm.template),
    ]
    assert all(len(vllm.prompt_token_ids(r)) > SHORT_ORIGINAL for r in requests)
    verdicts = _verdicts(engines, requests)
    assert [v.verdict for v in verdicts] == ["identical", "identical"], [v.detail for v in verdicts]


def test_verify_names_the_first_differing_token_within_the_original_length(engines):
    vllm, _ = engines
    requests = [EngineRequest(id=f"short-{q}", prompt=build_prompt(q, template=vllm.template)) for q in ("Hi.", "Why?")]
    assert all(len(vllm.prompt_token_ids(r)) + 16 <= SHORT_ORIGINAL for r in requests)
    verdicts = _verdicts(engines, requests)
    assert [v.verdict for v in verdicts] == ["differs", "differs"]
    assert all("ids identical; token " in v.detail and " vs reference " in v.detail for v in verdicts)
