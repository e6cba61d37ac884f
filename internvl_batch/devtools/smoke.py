"""`internvl-batch smoke`: a checkpoint in vLLM's *stock* InternVL path, fed PIL images.

No Ray, no job, none of our pre-tiling: it proves the environment on its own (vLLM loads
the original InternVL layout without remote code, the vision tower sees the image,
tokens come out), which is what to run first on a new machine or a new vLLM version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from internvl_batch.model.prompts import build_prompt


@dataclass(frozen=True)
class SmokeResult:
    text: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int


def generate(model: str | Path, images: list, question: str, max_tokens: int = 16) -> list[SmokeResult]:
    """Greedy generation, one single-image prompt per image, through vLLM's stock path."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    # vLLM's own InternVL processor expands `<image>` from the image it tiles itself.
    prompt = build_prompt(question, [1]).with_placeholders
    llm = LLM(
        model=str(model),
        dtype="float32",
        max_model_len=8192,
        max_num_seqs=4,
        enforce_eager=True,
        limit_mm_per_prompt={"image": 1, "video": 0},
        seed=0,
    )
    try:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        outs = llm.generate(
            [{"prompt": prompt, "multi_modal_data": {"image": im}} for im in images], params, use_tqdm=False
        )
    finally:
        llm.llm_engine.engine_core.shutdown()
    return [SmokeResult(o.outputs[0].text, tuple(o.outputs[0].token_ids), len(o.prompt_token_ids)) for o in outs]
