"""Smoke generation: the tiny checkpoint in the real vLLM engine, fed an image.

Until the distributed job lands, this is what the README's demo command runs: it proves
the environment end to end (vLLM loads the original InternVL layout without remote
code, the vision tower sees the image, tokens come out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from internvl_batch.prompts import build_prompt


@dataclass(frozen=True)
class SmokeResult:
    text: str
    token_ids: tuple[int, ...]
    num_prompt_tokens: int


def sample_image(seed: int = 0, size: tuple[int, int] = (640, 480)):
    """A deterministic, non-trivial RGB test image (gradient + noise)."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    base = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1)
    noisy = base + rng.normal(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


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
    return [
        SmokeResult(o.outputs[0].text, tuple(o.outputs[0].token_ids), len(o.prompt_token_ids)) for o in outs
    ]
