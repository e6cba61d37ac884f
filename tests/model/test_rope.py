"""RoPE as the card runs it: which variant each family has, the vLLM max_model_len that
keeps the card's factors (or the refusal that explains why none does), and the HF reference
engine's rotary embedding equal to the card's Phi-3 code at every length."""

from pathlib import Path

import pytest
import torch

from internvl_batch.config import ModelConfig, SamplingConfig
from internvl_batch.engines.base import EngineRequest
from internvl_batch.model.prompts import build_prompt
from internvl_batch.model.rope import Rope, RopeError, plan_rope
from tests.support.card_rope import CardSuRope
from tests.support.families import SHORT_ORIGINAL, twin_with_llm_config

EXPECTED_KIND = {"qwen2": "default", "internlm2": "dynamic", "phi3": "longrope", "llama3": "default",
                 "qwen3": "default", "phi3-internvl2": "longrope"}  # fmt: skip


@pytest.mark.parametrize("family", sorted(EXPECTED_KIND))
def test_each_twin_has_its_checkpoints_rope(twin_dirs, family):
    import json

    llm = json.loads((twin_dirs[family] / "config.json").read_text())["llm_config"]
    rope = Rope.of(llm)
    assert rope.kind == EXPECTED_KIND[family]
    assert rope.switch_at == {"longrope": 4096, "dynamic": 32768}.get(rope.kind)


@pytest.mark.parametrize(
    "scaling, kind",
    [
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}, "llama3"),  # Llama-3.1: static
        ({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, "yarn"),  # Qwen2.5: static
        ({"type": "linear", "factor": 2.0}, "linear"),
        (None, "default"),
    ],
)  # fmt: skip
def test_static_variants_need_no_choice(scaling, kind):
    rope = Rope.of({"model_type": "qwen2", "max_position_embeddings": 32768, "rope_scaling": scaling})
    assert rope.kind == kind and rope.switch_at is None
    assert plan_rope(rope, 8192, "card", (30000, "x")).max_model_len == 8192  # nothing to cap
    with pytest.raises(RopeError, match="rope_factors: long applies to LongRoPE"):
        plan_rope(rope, 8192, "long", None)


def test_phi3_yarn_and_unknown_variants_are_refused():
    with pytest.raises(RopeError, match="Phi-3 with rope_scaling type 'yarn'"):
        Rope.of({"model_type": "phi3", "rope_scaling": {"type": "yarn", "short_factor": [1], "long_factor": [1]}})
    with pytest.raises(RopeError, match="'ntk-by-parts' is not supported"):
        Rope.of({"model_type": "qwen2", "rope_scaling": {"type": "ntk-by-parts"}})


LONGROPE = Rope("longrope", 131072, 4096)


def test_longrope_caps_vllm_at_the_original_length_when_every_planned_sequence_fits():
    plan = plan_rope(LONGROPE, 8192, "card", (4096, "worst row"))
    assert (plan.max_model_len, plan.sequence_limit) == (4096, 4096)
    assert "capped at 4096" in plan.note
    unknown = plan_rope(LONGROPE, 8192, "card", None)  # a ModelConfig without a job: rows checked one by one
    assert (unknown.max_model_len, unknown.sequence_limit) == (4096, 4096)
    within = plan_rope(LONGROPE, 2048, "card", (5000, "worst row"))  # already within: truncation as usual
    assert (within.max_model_len, within.sequence_limit) == (2048, None)


def test_longrope_refuses_a_job_whose_longest_sequence_passes_the_original_length():
    with pytest.raises(RopeError) as e:
        plan_rope(LONGROPE, 8192, "card", (4097, "task 'caption', 1 image(s) of 13 tiles"))
    assert e.value.key == "model.rope_factors"
    for hint in ("4097 tokens", "13 tiles", "short_factor", "model.rope_factors: long", "model.max_model_len: 4096"):
        assert hint in str(e.value)


def test_long_factors_only_when_set_and_only_where_vllm_uses_them():
    plan = plan_rope(LONGROPE, 8192, "long", (9000, "x"))
    assert (plan.max_model_len, plan.sequence_limit) == (8192, None) and "differ from the card" in plan.note
    with pytest.raises(RopeError, match="needs model.max_model_len above"):
        plan_rope(LONGROPE, 4096, "long", None)


def test_dynamic_ntk_is_refused_beyond_where_the_card_rescales():
    dynamic = Rope("dynamic", 32768, 32768)
    assert plan_rope(dynamic, 32768, "card", None).max_model_len == 32768
    with pytest.raises(RopeError, match="exceeds max_position_embeddings=32768") as e:
        plan_rope(dynamic, 65536, "card", None)
    assert e.value.key == "model.max_model_len"


# -- the HF reference engine's RoPE is the card's ----------------------------------------


@pytest.fixture(scope="module")
def short_phi3(twin_dirs, tmp_path_factory):
    """The phi3 twin switching factors at 64 tokens, so sequences beyond are cheap."""
    dst = tmp_path_factory.mktemp("short") / "phi3"
    return twin_with_llm_config(twin_dirs["phi3"], dst, original_max_position_embeddings=SHORT_ORIGINAL)


def _rotary(model_dir: Path, long_rope: bool = False):
    from internvl_batch.engines.hf import load_hf_model

    return load_hf_model(model_dir, "float32", long_rope=long_rope).model.language_model.rotary_emb


@pytest.mark.parametrize(
    "positions, factors",
    [
        (torch.arange(4096)[None], "short"),  # a prefill within the original length
        (torch.arange(4097)[None], "long"),  # one token longer
        (torch.tensor([[4095]]), "short"),  # a decode step reaching 4096 tokens
        (torch.tensor([[4096]]), "long"),  # the step that crosses: long from here on
        (torch.tensor([[10]]), "short"),  # a later short request (transformers resets, as the card recomputes)
    ],
)
def test_hf_reference_rotary_is_the_cards_at_every_length(twin_dirs, positions, factors):
    import json

    llm = json.loads((twin_dirs["phi3"] / "config.json").read_text())["llm_config"]
    card, ours = CardSuRope(llm), _rotary(twin_dirs["phi3"])
    assert (card.factors_for(positions) is card.long) == (factors == "long")
    x = torch.zeros(1, dtype=torch.float32)
    for a, b in zip(ours(x, positions), card(x, positions)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_long_rope_forced_uses_long_factors_at_every_length(twin_dirs):
    import json

    llm = json.loads((twin_dirs["phi3"] / "config.json").read_text())["llm_config"]
    card, forced = CardSuRope(llm), _rotary(twin_dirs["phi3"], long_rope=True)
    x, pos = torch.zeros(1), torch.arange(100)[None]
    long_at_100 = card(x, torch.arange(5000)[None])[0][:, :100]
    torch.testing.assert_close(forced(x, pos)[0], long_at_100, rtol=0, atol=1e-6)
    assert not torch.allclose(card(x, pos)[0], long_at_100)


@pytest.mark.parametrize(
    "question, max_tokens, where",
    [("Hi.", 12, "below"), ("Describe the sea and the sky.", 40, "crossing"), ("Describe the sea. " * 8, 16, "above")],
)
def test_hf_reference_answers_as_the_cards_rope_below_across_and_above(short_phi3, question, max_tokens, where):
    """Greedy tokens of the HF reference engine equal a run whose rotary embedding is the card's
    own rule, for a prompt + answer within 64 tokens, one that crosses 64 while answering, and a
    prompt beyond 64; forcing long factors changes the first."""
    from internvl_batch.engines.hf import HFEngine

    sampling = SamplingConfig(max_tokens=max_tokens)
    model = ModelConfig(path=str(short_phi3), dtype="float32", max_model_len=512)
    ref = HFEngine(model, sampling, reference=True)
    req = EngineRequest(id=where, prompt=build_prompt(question, template=ref.template))
    (theirs,) = ref.generate([req])
    n, total = theirs.num_prompt_tokens, theirs.num_prompt_tokens + theirs.num_output_tokens
    assert {"below": total <= SHORT_ORIGINAL, "crossing": n < SHORT_ORIGINAL < total,
            "above": n > SHORT_ORIGINAL}[where], (n, total)  # fmt: skip
    card = CardSuRope(ref.checkpoint.config["llm_config"])
    ref._model.model.language_model.rotary_emb.forward = card  # the card's rule in place of transformers'
    (cards,) = ref.generate([req])
    assert theirs.token_ids == cards.token_ids
    if where == "below":
        forced = HFEngine(model.model_copy(update={"rope_factors": "long"}), sampling)
        assert forced.generate([req])[0].token_ids != theirs.token_ids


def test_card_mode_refuses_a_row_whose_answer_would_cross_the_original_length(short_phi3):
    """max_model_len 512 on a checkpoint switching at 64: the engine runs at 64 (vLLM's short
    factors), and a row whose prompt + max_tokens passes 64 is context_overflow, saying why."""
    from internvl_batch.engines.hf import HFEngine

    model = ModelConfig(path=str(short_phi3), dtype="float32", max_model_len=512)
    engine = HFEngine(model, SamplingConfig(max_tokens=30))
    assert (engine.max_model_len, engine.sequence_limit) == (SHORT_ORIGINAL, SHORT_ORIGINAL)
    fits = EngineRequest(id="fits", prompt=build_prompt("Hi.", template=engine.template),
                         sampling=SamplingConfig(max_tokens=8))  # fmt: skip
    crosses = EngineRequest(id="crosses", prompt=build_prompt("Hi.", template=engine.template))
    done, refused = engine.generate([fits, crosses])
    assert done.status == "ok" and done.num_prompt_tokens + 8 <= SHORT_ORIGINAL
    assert refused.status == "context_overflow" and "+ sampling.max_tokens 30 exceeds 64" in refused.error
    assert "LongRoPE" in refused.error
