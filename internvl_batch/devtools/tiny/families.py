"""One tiny twin per LLM family of the published InternVL checkpoints.

Each mirrors one real checkpoint's config.json (same keys, `llm_config` architecture,
`template`, the vision generation's settings), tokenizer layout and chat template;
only the sizes are tiny. The LLM head size (32) is one vLLM's CPU attention supports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_batch.devtools.tiny import tokenizer_files as tf
from internvl_batch.model.templates import Template, get_template

VISION = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
LLM = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

_VIT_300M = {  # InternViT-300M-448px (V1.5) and -V2_5: the same architecture
    "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "image_size": 448, "patch_size": 14,
    "num_channels": 3, "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6, "hidden_act": "gelu", "use_flash_attn": False, "drop_path_rate": 0.0, "dropout": 0.0,
    "attention_dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "bfloat16",
}  # fmt: skip
_VIT_6B = {**_VIT_300M, "qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm"}  # InternViT-6B-448px

# The V1.5 checkpoints (Mini-InternVL-Chat-4B-V1-5) carry English system messages.
PHI3_V1_5_SYSTEM = "You are an AI assistant whose name is Phi-3."


def _jinja(system_open: str, system: str, end: str, roles: dict[str, str], generation: str) -> str:
    """A chat template written the way the checkpoints write theirs (Jinja, by hand)."""
    return (
        "{% if messages[0]['role'] != 'system' %}"
        f"{{{{ {system_open!r} + {system!r} + {end!r} }}}}"
        "{% endif %}"
        "{% for message in messages %}"
        + "".join(
            f"{{% if message['role'] == {role!r} %}}{{{{ {tag!r} + message['content'] + {end!r} }}}}{{% endif %}}"
            for role, tag in roles.items()
        )
        + "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {generation!r} }}}}{{% endif %}}"
    )


def _chatml(system: str, end: str) -> str:
    roles = {r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")}
    return _jinja("<|im_start|>system\n", system, end, roles, "<|im_start|>assistant\n")


def _phi3(system: str) -> str:
    roles = {r: f"<|{r}|>\n" for r in ("system", "user", "assistant")}
    return _jinja("<|system|>\n", system, "<|end|>", roles, "<|assistant|>\n")


def _llm(arch: str, model_type: str, vocab_size: int, **extra: Any) -> dict[str, Any]:
    return {"architectures": [arch], "model_type": model_type, "vocab_size": vocab_size, "hidden_act": "silu",
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", **LLM, **extra}  # fmt: skip


def _qwen2_llm(ids: dict[str, int]) -> dict[str, Any]:
    return _llm(
        "Qwen2ForCausalLM", "qwen2", len(ids), max_position_embeddings=32768, max_window_layers=LLM["num_hidden_layers"],
        rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=None, use_sliding_window=False,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip


def _qwen3_llm(ids: dict[str, int]) -> dict[str, Any]:
    return _llm(
        "Qwen3ForCausalLM", "qwen3", len(ids), head_dim=32, attention_bias=False, max_position_embeddings=40960,
        max_window_layers=LLM["num_hidden_layers"], rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=None,
        use_sliding_window=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )  # fmt: skip


def _internlm2_llm(ids: dict[str, int]) -> dict[str, Any]:
    return _llm(
        "InternLM2ForCausalLM", "internlm2", max(ids.values()) + 1, bias=False, attn_implementation="eager",
        auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                  "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                  "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000,
        rope_scaling={"type": "dynamic", "factor": 2.0}, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip


def _phi3_llm(ids: dict[str, int]) -> dict[str, Any]:
    half_head = LLM["hidden_size"] // LLM["num_attention_heads"] // 2
    return _llm(
        "Phi3ForCausalLM", "phi3", max(ids.values()) + 1, attention_dropout=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
        max_position_embeddings=131072, original_max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0, sliding_window=262144, bos_token_id=1, eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_scaling={"type": "su", "short_factor": [1.0 + 0.05 * i for i in range(half_head)],
                      "long_factor": [1.0 + 2.0 * i for i in range(half_head)]},
    )  # fmt: skip


def _llama3_llm(ids: dict[str, int]) -> dict[str, Any]:
    return _llm(
        "LlamaForCausalLM", "llama", len(ids), attention_bias=False, mlp_bias=False, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None, pretraining_tp=1,
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"],
    )  # fmt: skip


@dataclass(frozen=True)
class Family:
    name: str
    mirrors: str
    llm: str  # the weight layout: qwen2, qwen3, llama, phi3, internlm2
    template: Template
    vision: dict[str, Any]
    write_tokenizer: Callable[[Path, int, str], dict[str, int]]
    llm_config: Callable[[dict[str, int]], dict[str, Any]]
    chat_template: str
    eos_tokens: tuple[str, ...]  # generation_config.json (model.chat ignores it)


_INTERNVL2 = get_template("Hermes-2").system_message
_INTERNVL2_5 = get_template("internvl2_5")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2", "OpenGVLab/InternVL2_5-1B", "qwen2", _INTERNVL2_5, _VIT_300M,
            lambda out, seed, chat: tf.qwen_files(out, seed, tf.QWEN2_SPECIAL_TOKENS, chat), _qwen2_llm,
            _chatml(_INTERNVL2_5.system_message, "<|im_end|>\n"), ("<|im_end|>", "<|endoftext|>"),
        ),
        Family(
            "internlm2", "OpenGVLab/InternVL2_5-8B", "internlm2", _INTERNVL2_5, _VIT_300M,
            tf.internlm2_files, _internlm2_llm,
            _chatml(_INTERNVL2_5.system_message, "<|im_end|>\n"), ("</s>", "<|im_end|>"),
        ),
        Family(
            "phi3", "OpenGVLab/Mini-InternVL-Chat-4B-V1-5", "phi3",
            get_template("phi3-chat").with_system_message(PHI3_V1_5_SYSTEM), _VIT_300M,
            tf.phi3_files, _phi3_llm, _phi3(PHI3_V1_5_SYSTEM), ("<|endoftext|>", "<|assistant|>", "<|end|>"),
        ),
        Family(
            "llama3", "OpenGVLab/InternVL2-Llama3-76B", "llama", get_template("Hermes-2"), _VIT_6B,
            tf.llama3_files, _llama3_llm, _chatml(_INTERNVL2, "<|im_end|>"), ("<|end_of_text|>", "<|im_end|>"),
        ),
        Family(
            "qwen3", "OpenGVLab/InternVL3_5-1B", "qwen3", _INTERNVL2_5, _VIT_300M,
            lambda out, seed, chat: tf.qwen_files(out, seed, tf.QWEN3_SPECIAL_TOKENS, chat), _qwen3_llm,
            _chatml(_INTERNVL2_5.system_message, "<|im_end|>\n"), ("<|im_end|>", "<|endoftext|>"),
        ),
    )
}  # fmt: skip


# Twins that share a family's LLM and tokenizer but not its checkpoint's template: for the
# prompt-id tests (no engine of their own).
VARIANTS: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "phi3-internvl2", "OpenGVLab/InternVL2-4B", "phi3", get_template("phi3-chat"), _VIT_300M,
            tf.phi3_files, _phi3_llm, _phi3(_INTERNVL2), ("<|endoftext|>", "<|assistant|>", "<|end|>"),
        ),
    )
}  # fmt: skip
TWINS: dict[str, Family] = {**FAMILIES, **VARIANTS}


def conversation_file(template: Template) -> str:
    """The checkpoint's conversation.py, reduced to its own template's registration."""
    return (
        "# InternVL's conversation.py, reduced to this checkpoint's template (written by\n"
        "# internvl-batch make-tiny-model). Read as data; the real file defines these names.\n"
        "register_conv_template(\n"
        "    Conversation(\n"
        f"        name={template.name!r},\n"
        f"        system_template={template.system_template!r},\n"
        f"        system_message={template.system_message!r},\n"
        f"        roles={template.roles!r},\n"
        "        sep_style=SeparatorStyle.MPT,\n"
        f"        sep={template.sep!r},\n"
        "    )\n"
        ")\n"
    )


def build_config(family: Family, ids: dict[str, int]) -> dict[str, Any]:
    """config.json in OpenGVLab's published layout (the mirrored checkpoint's, shrunk)."""
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": family.template.name,
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": 448,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "torch_dtype": "bfloat16",
        "vision_config": {**family.vision, **VISION},
        "llm_config": family.llm_config(ids),
    }
