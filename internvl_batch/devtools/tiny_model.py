"""A tiny, randomly initialised InternVL2.5 checkpoint that the project builds itself.

No model hub is reachable in tests or CI, so tests and the demo run the real loading and
inference code on this checkpoint. It has the real architecture and the real published
layout (`InternVLChatModel`: InternViT-448px/14 + pixel-shuffle MLP projector + Qwen2),
so every code path is the one a real 1B-78B checkpoint takes; only the sizes are tiny and
the output is gibberish. Same seed, same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from internvl_batch.model.prompts import IMG_CONTEXT, IMG_END, IMG_START, SYSTEM_MESSAGE

# InternVL's special tokens, as the published Qwen2.5-based tokenizers carry them.
# `<|video_pad|>` is what makes vLLM enable video input for a Qwen2-based InternVL.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<|video_pad|>",
]

# The internvl2_5 conversation template as a Jinja chat template (the published
# tokenizer_config.json carries the same one).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_MESSAGE + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BPE_VOCAB_SIZE = 1024

# Sizes: image_size/patch_size/downsample_ratio are the real ones (256 tokens per tile);
# the LLM head size is one vLLM's CPU attention supports (32).
VISION = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
LLM = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

_WORDS = [
    "a",
    "an",
    "the",
    "this",
    "that",
    "photo",
    "picture",
    "image",
    "video",
    "frame",
    "of",
    "with",
    "on",
    "in",
    "at",
    "near",
    "under",
    "over",
    "cat",
    "dog",
    "bird",
    "horse",
    "person",
    "man",
    "woman",
    "child",
    "people",
    "car",
    "bus",
    "bike",
    "train",
    "boat",
    "plane",
    "tree",
    "flower",
    "grass",
    "sky",
    "cloud",
    "sun",
    "water",
    "river",
    "sea",
    "beach",
    "mountain",
    "road",
    "street",
    "building",
    "house",
    "room",
    "table",
    "chair",
    "bed",
    "window",
    "door",
    "wall",
    "floor",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "brown",
    "gray",
    "orange",
    "pink",
    "small",
    "large",
    "big",
    "old",
    "young",
    "sitting",
    "standing",
    "walking",
    "running",
    "flying",
    "is",
    "are",
    "was",
    "were",
    "and",
    "or",
    "but",
    "two",
    "three",
    "many",
    "some",
    "one",
    "shows",
    "describe",
    "detail",
    "color",
    "background",
    "foreground",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "bright",
    "dark",
    "sunny",
    "rainy",
    "night",
    "day",
    "what",
    "where",
    "who",
    "how",
    "why",
    "which",
    "does",
    "do",
    "can",
    "see",
    "there",
    "it",
    "its",
    "they",
    "their",
    "question",
    "answer",
    "short",
    "caption",
    "detailed",
    "describe",
    "the",
    "image",
    "please",
    "yes",
    "no",
    "count",
    "number",
    "text",
    "sign",
    "label",
]


def _corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":", "\n"])
        if rng.random() < 0.3:
            line += f" {rng.randint(0, 9999)}"
        lines.append(line)
    return lines


def build_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained locally, with InternVL's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def build_config(vocab_size: int) -> dict[str, Any]:
    """config.json in OpenGVLab's published layout (InternVL2_5-1B's, shrunk)."""
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internvl2_5",
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
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "image_size": 448,
            "patch_size": 14,
            "num_channels": 3,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "use_flash_attn": False,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "torch_dtype": "bfloat16",
            **VISION,
        },
        "llm_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "max_window_layers": LLM["num_hidden_layers"],
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": None,
            "torch_dtype": "bfloat16",
            **LLM,
        },
    }


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the original layout, named as the published checkpoints name it."""
    v, t = config["vision_config"], config["llm_config"]
    d, vi = v["hidden_size"], v["intermediate_size"]
    n_patches = (v["image_size"] // v["patch_size"]) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, d),
        "vision_model.embeddings.patch_embedding.weight": (d, 3, v["patch_size"], v["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": (d,),
        "vision_model.embeddings.position_embedding": (1, n_patches + 1, d),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        shapes |= {
            p + "ls1": (d,), p + "ls2": (d,),
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
            p + "mlp.fc1.weight": (vi, d), p + "mlp.fc1.bias": (vi,),
            p + "mlp.fc2.weight": (d, vi), p + "mlp.fc2.bias": (d,),
        }  # fmt: skip
    h, ti = t["hidden_size"], t["intermediate_size"]
    shuffled = d * int(1 / config["downsample_ratio"]) ** 2
    shapes |= {
        "mlp1.0.weight": (shuffled,), "mlp1.0.bias": (shuffled,),
        "mlp1.1.weight": (h, shuffled), "mlp1.1.bias": (h,),
        "mlp1.3.weight": (h, h), "mlp1.3.bias": (h,),
        "language_model.model.embed_tokens.weight": (t["vocab_size"], h),
        "language_model.model.norm.weight": (h,),
        "language_model.lm_head.weight": (t["vocab_size"], h),
    }  # fmt: skip
    head = h // t["num_attention_heads"]
    kv = head * t["num_key_value_heads"]
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ti, h), p + "mlp.up_proj.weight": (ti, h),
            p + "mlp.down_proj.weight": (h, ti),
        }  # fmt: skip
    return shapes


def _init(name: str, shape: tuple[int, ...], gen) -> torch.Tensor:  # noqa: F821
    import torch

    if name.endswith(("ls1", "ls2")) or (name.endswith(".weight") and len(shape) == 1):
        return torch.ones(shape)  # layer scales and norm gains
    if len(shape) == 1 and name.endswith(".bias"):
        return torch.zeros(shape)
    # Tuned so that greedy output is diverse and steered by both the image and the text
    # (tests use that to prove the vision path is really used): a strong vision tower, a
    # quiet projector so image tokens don't drown the text, and a lively LLM.
    std = {"vision_model": 0.5, "mlp1": 0.01}.get(name.split(".")[0], 0.2)
    return torch.randn(shape, generator=gen) * std


def build_weights(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:  # noqa: F821
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {name: _init(name, shape, gen).to(torch.bfloat16) for name, shape in sorted(weight_shapes(config).items())}


def _tokenizer_files(out: Path, tok) -> None:
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special_map = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def make_tiny_model(out_dir: str | Path, seed: int = 0, fmt: str = "original") -> Path:
    """Write the checkpoint into `out_dir` (created) and return its path.

    fmt="original": OpenGVLab's published layout (what vLLM and the job load).
    fmt="hf": transformers' native `InternVLForConditionalGeneration` layout.
    """
    from safetensors.torch import save_file

    if fmt not in ("original", "hf"):
        raise ValueError(f"format must be 'original' or 'hf', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    config = build_config(vocab_size=tok.get_vocab_size())
    weights = build_weights(config, seed)
    if fmt == "hf":
        from internvl_batch.model.layout import to_hf_layout

        img_context_id = tok.token_to_id(IMG_CONTEXT)
        config, weights = to_hf_layout(config, weights, image_token_id=img_context_id)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer_files(out, tok)
    return out
