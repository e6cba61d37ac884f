"""Config classes for OpenGVLab's original InternVL checkpoint layout (`internvl_chat`).

Why: neither vLLM nor transformers ships a config class for `model_type: internvl_chat`;
the published checkpoints carry one as remote code. Registering these with
`AutoConfig` (see `register_config_classes`) lets vLLM load the checkpoints with
`trust_remote_code=False`. Field names and defaults follow the published
`configuration_internvl_chat.py` / `configuration_intern_vit.py`, so `to_dict()` round-trips
a published `config.json`.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(
        self,
        num_channels: int = 3,
        patch_size: int = 14,
        image_size: int = 448,
        qkv_bias: bool = False,
        hidden_size: int = 3200,
        num_attention_heads: int = 25,
        intermediate_size: int = 12800,
        qk_normalization: bool = True,
        num_hidden_layers: int = 48,
        use_flash_attn: bool = True,
        hidden_act: str = "gelu",
        norm_type: str = "rms_norm",
        layer_norm_eps: float = 1e-6,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        initializer_factor: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.image_size = image_size
        self.qkv_bias = qkv_bias
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.qk_normalization = qk_normalization
        self.num_hidden_layers = num_hidden_layers
        self.use_flash_attn = use_flash_attn
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor


class InternLM2Config(PretrainedConfig):
    """The LLM of InternVL2/2.5-2B/8B/26B and InternVL 1.5 (InternLM2/2.5), otherwise also remote code."""

    model_type = "internlm2"

    def __init__(
        self,
        vocab_size: int = 103168,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        bias: bool = True,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


# The LLM families InternVL 1.5-3.5 are built on, by the `architectures` of their llm_config.
_LLM_MODEL_TYPES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",  # InternVL3.5-30B-A3B / 241B-A28B
    "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
    "InternLM2ForCausalLM": "internlm2",
}


def _llm_config(llm_config: dict[str, Any]) -> PretrainedConfig:
    arch = (llm_config.get("architectures") or ["Qwen2ForCausalLM"])[0]
    if arch not in _LLM_MODEL_TYPES:
        raise ValueError(
            f"llm_config.architectures[0]={arch!r} is not supported; expected one of {sorted(_LLM_MODEL_TYPES)}"
        )
    model_type = _LLM_MODEL_TYPES[arch]
    cls = InternLM2Config if model_type == "internlm2" else CONFIG_MAPPING[model_type]
    return cls(**{k: v for k, v in normalized_llm_config(llm_config).items() if k != "model_type"})


def normalized_llm_config(llm_config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a published llm_config that transformers 5 accepts."""
    out = copy.deepcopy(llm_config)
    scaling = out.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("type") == "su":
        # InternVL2-4B / Mini-InternVL-4B's Phi-3 calls longrope "su"; transformers 5
        # renames it only after filling in longrope's keys, and then rejects the config.
        scaling["type"] = "longrope"
    return out


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    sub_configs = {"vision_config": InternVisionConfig}

    def __init__(
        self,
        vision_config: dict | InternVisionConfig | None = None,
        llm_config: dict | PretrainedConfig | None = None,
        use_backbone_lora: int = 0,
        use_llm_lora: int = 0,
        select_layer: int = -1,
        force_image_size: int | None = None,
        downsample_ratio: float = 0.5,
        template: str | None = None,
        dynamic_image_size: bool = False,
        use_thumbnail: bool = False,
        ps_version: str = "v1",
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 6,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(vision_config, PretrainedConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = InternVisionConfig(**(vision_config or {}))
        if isinstance(llm_config, PretrainedConfig):
            self.llm_config = llm_config
        else:
            self.llm_config = _llm_config(llm_config or {})
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["vision_config"] = self.vision_config.to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        out.pop("text_config", None)  # vLLM's alias for llm_config, not part of the file
        return out


def register_config_classes() -> None:
    """Make `AutoConfig` resolve `internvl_chat` (and InternLM2) without remote code."""
    for cls in (InternVLChatConfig, InternVisionConfig, InternLM2Config):
        AutoConfig.register(cls.model_type, cls, exist_ok=True)
