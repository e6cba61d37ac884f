"""Tiny, randomly initialised InternVL checkpoints that the project builds itself.

No model hub is reachable in tests or CI, so tests and the demo run the real loading and
inference code on these. Each family's twin has the real architecture and the real
published layout (`InternVLChatModel`: InternViT-448px/14 + pixel-shuffle MLP projector +
the family's LLM, its tokenizer files, `template` and chat template), so every code path
is the one the mirrored checkpoint takes; only the sizes are tiny and the output is
gibberish. Same seed, same bytes. Families: see `devtools/tiny/families.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from internvl_batch.devtools.tiny.families import FAMILIES, TWINS, build_config, conversation_file
from internvl_batch.devtools.tiny.tokenizer_files import QWEN2_SPECIAL_TOKENS as SPECIAL_TOKENS
from internvl_batch.devtools.tiny.weights import build_weights
from internvl_batch.model.prompts import IMG_CONTEXT

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "SPECIAL_TOKENS", "TWINS", "make_tiny_model"]

DEFAULT_FAMILY = "qwen2"


def make_tiny_model(out_dir: str | Path, seed: int = 0, fmt: str = "original", family: str = DEFAULT_FAMILY) -> Path:
    """Write the checkpoint into `out_dir` (created) and return its path.

    fmt="original": OpenGVLab's published layout (what vLLM and the job load).
    fmt="hf": transformers' native `InternVLForConditionalGeneration` layout.
    family: which LLM family's published checkpoint it mirrors (FAMILIES), or a variant of
    one with another checkpoint's template (TWINS).
    """
    from safetensors.torch import save_file

    if fmt not in ("original", "hf"):
        raise ValueError(f"format must be 'original' or 'hf', got {fmt!r}")
    if family not in TWINS:
        raise ValueError(f"family must be one of {sorted(TWINS)}, got {family!r}")
    fam = TWINS[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = fam.write_tokenizer(out, seed, fam.chat_template)
    config = build_config(fam, ids)
    weights = build_weights(config, seed, fam.llm)
    if fmt == "hf":
        from internvl_batch.model.layout import to_hf_layout

        config, weights = to_hf_layout(config, weights, image_token_id=ids[IMG_CONTEXT])
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"eos_token_id": [ids[t] for t in fam.eos_tokens]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (out / "conversation.py").write_text(conversation_file(fam.template), encoding="utf-8")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
