"""Map OpenGVLab's published InternVL layout onto transformers' native one.

Why: transformers' `InternVLForConditionalGeneration` runs InternVL without remote code,
but expects other tensor names (`vision_tower.*`, split q/k/v, `multi_modal_projector.*`,
`lambda_1/2`, ...). Mapping at load time lets the HF reference engine run the very same
published checkpoints that vLLM loads, and lets `make-tiny-model --format hf` write the
native layout.
"""

from __future__ import annotations

import re
from typing import Any

_RENAMES: list[tuple[str, str]] = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls1$", r"model.vision_tower.encoder.layer.\1.lambda_1"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls2$", r"model.vision_tower.encoder.layer.\1.lambda_2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.q_norm\.", r"model.vision_tower.encoder.layer.\1.attention.q_norm."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.k_norm\.", r"model.vision_tower.encoder.layer.\1.attention.k_norm."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layer.\1.mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
]  # fmt: skip

_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")


def hf_name(name: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise KeyError(f"no HF name for checkpoint tensor {name!r}")


def map_state_dict(weights: dict[str, Any]) -> dict[str, Any]:
    """Original tensor names -> transformers' names; the fused vision qkv is split in 3."""
    out: dict[str, Any] = {}
    for name, tensor in weights.items():
        m = _QKV.match(name)
        if m:
            layer, kind = m.groups()
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0)):
                key = f"model.vision_tower.encoder.layer.{layer}.attention.{part}_proj.{kind}"
                out[key] = chunk.contiguous()
        else:
            out[hf_name(name)] = tensor
    return out


def map_config(config: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """An `internvl_chat` config.json dict -> an `internvl` (transformers) one."""
    v = config["vision_config"]
    t = dict(config["llm_config"])
    t.setdefault("model_type", "qwen2")
    vision = {
        "model_type": "internvl_vision",
        "hidden_size": v["hidden_size"],
        "num_hidden_layers": v["num_hidden_layers"],
        "num_attention_heads": v["num_attention_heads"],
        "intermediate_size": v["intermediate_size"],
        "hidden_act": v.get("hidden_act", "gelu"),
        "layer_norm_eps": v.get("layer_norm_eps", 1e-6),
        "norm_type": v.get("norm_type", "rms_norm"),
        "attention_bias": v.get("qkv_bias", False),
        "use_qk_norm": v.get("qk_normalization", False),
        "image_size": [v["image_size"]] * 2,
        "patch_size": [v["patch_size"]] * 2,
        "num_channels": v.get("num_channels", 3),
        "use_mean_pooling": True,  # the original has no final norm: Identity in transformers
        "layer_scale_init_value": 1.0,
    }
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "vision_config": vision,
        "text_config": t,
        "image_token_id": image_token_id,
        "image_seq_length": int((v["image_size"] // v["patch_size"]) ** 2 * config["downsample_ratio"] ** 2),
        "downsample_ratio": config["downsample_ratio"],
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.get("select_layer", -1),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": t.get("tie_word_embeddings", False),
        "torch_dtype": config.get("torch_dtype", "bfloat16"),
    }


def to_hf_layout(
    config: dict[str, Any], weights: dict[str, Any], *, image_token_id: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    return map_config(config, image_token_id), map_state_dict(weights)
