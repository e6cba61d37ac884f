"""Map OpenGVLab's published InternVL layout onto transformers' native one.

Why: transformers' `InternVLForConditionalGeneration` runs InternVL without remote code,
but expects other tensor names (`vision_tower.*`, split q/k/v, `multi_modal_projector.*`,
`lambda_1/2`, ...). Mapping at load time lets the HF reference engine run the very same
published checkpoints that vLLM loads, and lets `make-tiny-model --format hf` write the
native layout. transformers has no InternLM2; it is Llama with fused, grouped q/k/v
(`wqkv`) and other names, so InternLM2 LLMs are mapped onto `LlamaForCausalLM`.
"""

from __future__ import annotations

import re
from typing import Any

# Per-layer modules of InternViT (original name -> transformers' name).
_VISION_LAYER = {
    "ls1$": "lambda_1", "ls2$": "lambda_2", "norm1.": "layernorm_before.", "norm2.": "layernorm_after.",
    "attn.proj.": "attention.projection_layer.", "attn.q_norm.": "attention.q_norm.",
    "attn.k_norm.": "attention.k_norm.", "mlp.": "mlp.",
}  # fmt: skip
# Per-layer modules of InternLM2, which transformers runs as Llama.
_INTERNLM2_LAYER = {
    "attention.wo.": "self_attn.o_proj.", "feed_forward.w1.": "mlp.gate_proj.", "feed_forward.w3.": "mlp.up_proj.",
    "feed_forward.w2.": "mlp.down_proj.", "attention_norm.": "input_layernorm.",
    "ffn_norm.": "post_attention_layernorm.",
}  # fmt: skip


def _layer_renames(prefix: str, target: str, modules: dict[str, str]) -> list[tuple[str, str]]:
    return [(rf"^{re.escape(prefix)}(\d+)\.{re.escape(k.rstrip('$'))}{'$' if k.endswith('$') else ''}",
             rf"{target}\1.{v}") for k, v in modules.items()]  # fmt: skip


_RENAMES: list[tuple[str, str]] = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    *_layer_renames("vision_model.encoder.layers.", "model.vision_tower.encoder.layer.", _VISION_LAYER),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.output\.", "lm_head."),
    (r"^language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    *_layer_renames("language_model.model.layers.", "model.language_model.layers.", _INTERNLM2_LAYER),
    (r"^language_model\.model\.", "model.language_model."),
]  # fmt: skip

_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$")


def hf_name(name: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise KeyError(f"no HF name for checkpoint tensor {name!r}")


def _split_wqkv(tensor, llm_config: dict[str, Any]):
    """InternLM2's wqkv rows are (kv head, [its query heads..., key, value], head_dim)."""
    heads, kv = llm_config["num_attention_heads"], llm_config["num_key_value_heads"]
    head_dim = llm_config["hidden_size"] // heads
    grouped = tensor.reshape(kv, heads // kv + 2, head_dim, *tensor.shape[1:])
    q = grouped[:, :-2].reshape(heads * head_dim, *tensor.shape[1:])
    k = grouped[:, -2].reshape(kv * head_dim, *tensor.shape[1:])
    v = grouped[:, -1].reshape(kv * head_dim, *tensor.shape[1:])
    return q, k, v


def map_state_dict(weights: dict[str, Any], llm_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Original tensor names -> transformers' names; fused q/k/v (vision, InternLM2) are split."""
    out: dict[str, Any] = {}
    for name, tensor in weights.items():
        if m := _QKV.match(name):
            layer, kind = m.groups()
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0)):
                key = f"model.vision_tower.encoder.layer.{layer}.attention.{part}_proj.{kind}"
                out[key] = chunk.contiguous()
        elif m := _WQKV.match(name):
            if llm_config is None:
                raise ValueError("splitting InternLM2's wqkv needs the llm_config")
            layer, kind = m.groups()
            for part, chunk in zip(("q", "k", "v"), _split_wqkv(tensor, llm_config)):
                out[f"model.language_model.layers.{layer}.self_attn.{part}_proj.{kind}"] = chunk.contiguous()
        else:
            out[hf_name(name)] = tensor
    return out


def _llama_from_internlm2(t: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
        "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype",
    )  # fmt: skip
    bias = bool(t.get("bias", True))  # InternLM2's `bias` covers wqkv and wo, not the MLP
    llama = {k: t[k] for k in keep if k in t}
    return {**llama, "model_type": "llama", "architectures": ["LlamaForCausalLM"], "attention_bias": bias,
            "mlp_bias": False}  # fmt: skip


def hf_text_config(llm_config: dict[str, Any]) -> dict[str, Any]:
    """The llm_config as transformers' own model classes take it."""
    from internvl_batch.model.configs import normalized_llm_config

    t = normalized_llm_config(llm_config)
    t.setdefault("model_type", "qwen2")
    return _llama_from_internlm2(t) if t["model_type"] == "internlm2" else t


def map_config(config: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """An `internvl_chat` config.json dict -> an `internvl` (transformers) one."""
    v = config["vision_config"]
    t = hf_text_config(config["llm_config"])
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
    return map_config(config, image_token_id), map_state_dict(weights, config["llm_config"])
