"""RoPE as the checkpoint's own code runs it, and the vLLM `max_model_len` that reproduces it.

Why: some RoPE variants depend on the length of the sequence, and vLLM can't follow that
per sequence. The card's model (its remote code, transformers 4.37-4.40) and transformers'
own classes recompute the rotary frequencies in every forward pass from
`max(position_ids) + 1`; vLLM builds one table per engine, from `max_model_len`:

- `longrope` ("su", Phi-3: Mini-InternVL-Chat-4B-V1-5, InternVL2-4B): the card's
  `Phi3SuScaledRotaryEmbedding` uses `short_factor` while the sequence is within
  `original_max_position_embeddings` (4096) and `long_factor` beyond (from the token that
  crosses it on; the cached keys keep theirs). vLLM 0.32's
  `Phi3LongRoPEScaledRotaryEmbedding` uses `long_factor` at *every* position when
  `max_model_len > original_max_position_embeddings`, else `short_factor` everywhere. So
  vLLM answers as the card only for sequences that stay within 4096 tokens and run with
  `max_model_len <= 4096`, or for prompts longer than 4096 with a larger `max_model_len`;
  never for a prompt that fits 4096 while its answer crosses it.
- `dynamic` (InternLM2 / 2.5, factor 2): the card rescales the base only for sequences
  beyond `max_position_embeddings` (32768); vLLM's table keeps the base unchanged up to
  `max_position_embeddings`. Equal up to there; beyond, they differ.
- no scaling, `linear`, `yarn`, `llama3`: the frequencies do not depend on the sequence's
  length, in the card, in transformers and in vLLM alike: nothing to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATIC_KINDS = ("default", "linear", "yarn", "llama3")


class RopeError(ValueError):
    """No vLLM setting reproduces the card for the sequences this job plans; says what to set."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Rope:
    kind: str  # default, linear, dynamic, yarn, llama3, longrope
    max_position_embeddings: int
    switch_at: int | None = None  # where the card's frequencies change with the length

    @classmethod
    def of(cls, llm_config: dict[str, Any]) -> Rope:
        scaling = llm_config.get("rope_scaling") or llm_config.get("rope_parameters") or {}
        kind = str(scaling.get("type") or scaling.get("rope_type") or "default")
        max_pos = int(llm_config.get("max_position_embeddings") or 0)
        if kind == "su":
            kind = "longrope"
        if kind == "yarn" and llm_config.get("model_type") == "phi3":
            # Phi-3's own "yarn" switches short/long factors like su, with another scale;
            # transformers 5 and vLLM each treat it differently. No InternVL checkpoint has it.
            raise RopeError("model.path", "Phi-3 with rope_scaling type 'yarn' is not supported")
        if kind == "longrope":
            original = scaling.get("original_max_position_embeddings") or llm_config.get(
                "original_max_position_embeddings"
            )
            return cls(kind, max_pos, int(original) if original else max_pos)
        if kind == "dynamic":
            return cls(kind, max_pos, max_pos)
        if kind not in STATIC_KINDS:
            raise RopeError("model.path", f"rope_scaling type {kind!r} is not supported")
        return cls(kind, max_pos)


@dataclass(frozen=True)
class RopePlan:
    """What the engine is given: vLLM's `max_model_len`, and a limit on prompt + max_tokens
    (rows beyond it are refused as context_overflow: the card would change factors there)."""

    max_model_len: int
    sequence_limit: int | None
    note: str


def plan_rope(rope: Rope, max_model_len: int, rope_factors: str, longest: tuple[int, str] | None) -> RopePlan:
    """`longest`: the longest prompt + max_tokens the job plans, and what it is; None: unknown."""
    if rope.kind == "dynamic" and max_model_len > rope.switch_at:
        raise RopeError(
            "model.max_model_len",
            f"max_model_len={max_model_len} exceeds max_position_embeddings={rope.switch_at} of a dynamic-NTK "
            f"RoPE: the card rescales RoPE beyond {rope.switch_at} tokens, vLLM does not; set model.max_model_len "
            f"<= {rope.switch_at}",
        )
    if rope.kind != "longrope":
        if rope_factors == "long":
            raise RopeError(
                "model.rope_factors", f"rope_factors: long applies to LongRoPE checkpoints, not {rope.kind}"
            )
        return RopePlan(max_model_len, None, f"RoPE {rope.kind}: the same at every length in the card and vLLM")
    original = rope.switch_at
    if rope_factors == "long":
        if max_model_len <= original:
            raise RopeError(
                "model.rope_factors",
                f"rope_factors: long needs model.max_model_len above original_max_position_embeddings={original} "
                f"(vLLM uses long factors only then); got {max_model_len}",
            )
        return RopePlan(
            max_model_len,
            None,
            f"LongRoPE long factors at every length (model.rope_factors: long): answers differ from the card's "
            f"for sequences within {original} tokens",
        )
    if max_model_len <= original:
        return RopePlan(max_model_len, None, f"LongRoPE short factors, as the card within {original} tokens")
    if longest is not None and longest[0] > original:
        raise RopeError(
            "model.rope_factors",
            f"this checkpoint's RoPE is LongRoPE: its own code uses short_factor while a sequence is within "
            f"original_max_position_embeddings={original} tokens and long_factor beyond; vLLM uses one set for a "
            f"whole run (long at every position when max_model_len > {original}). The longest sequence this job "
            f"plans is {longest[0]} tokens ({longest[1]}), so no vLLM max_model_len answers as the card for every "
            f"row. Make every row fit {original} tokens (lower preprocess.max_num, multi_image_max_num, "
            f"video.num_segments or sampling.max_tokens), or set model.max_model_len: {original} (a prompt that does "
            f"not fit becomes context_overflow, an answer stops at {original} tokens), or set model.rope_factors: long (long factors for every row: "
            f"answers within {original} tokens then differ from the card's)",
        )
    why = f"the longest planned sequence is {longest[0]} tokens" if longest else "no job given"
    return RopePlan(
        original,
        original,
        f"LongRoPE short factors, as the card within {original} tokens: vLLM's max_model_len capped at "
        f"{original} (model.max_model_len {max_model_len}; {why})",
    )
