import json

import pytest
from safetensors import safe_open

from internvl_batch.devtools.tiny_model import SPECIAL_TOKENS, make_tiny_model
from internvl_batch.model.prompts import IMG_CONTEXT, build_prompt


def _weights(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def test_same_seed_gives_same_bytes(tmp_path, tiny_model_dir):
    again = make_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_other_seed_gives_other_weights(tmp_path, tiny_model_dir):
    other = make_tiny_model(tmp_path / "other", seed=1)
    a, b = _weights(tiny_model_dir), _weights(other)
    assert a.keys() == b.keys()
    assert not (a["mlp1.1.weight"] == b["mlp1.1.weight"]).all()


def test_small(tiny_model_dir):
    total = sum(f.stat().st_size for f in tiny_model_dir.iterdir())
    assert total < 5_000_000


def test_config_is_the_published_layout(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"]
    assert cfg["model_type"] == "internvl_chat"
    assert cfg["template"] == "internvl2_5"
    assert (cfg["downsample_ratio"], cfg["ps_version"], cfg["max_dynamic_patch"]) == (0.5, "v2", 12)
    assert cfg["dynamic_image_size"] and cfg["use_thumbnail"]
    assert cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    v = cfg["vision_config"]
    # 256 tokens per 448px tile: (448/14)^2 patches, pixel-shuffled by 0.5 in each direction
    assert (v["image_size"] // v["patch_size"]) ** 2 * cfg["downsample_ratio"] ** 2 == 256


def test_weight_names_follow_published_checkpoints(tiny_model_dir):
    names = _weights(tiny_model_dir).keys()
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"vision_model", "mlp1", "language_model"}
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in names
    assert "language_model.lm_head.weight" in names


def test_tokenizer_has_internvl_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = tok.get_vocab()
    for t in SPECIAL_TOKENS:
        assert t in vocab, t
        assert tok.encode(t, add_special_tokens=False) == [vocab[t]]  # never split
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(tok.encode("a photo of a red car", add_special_tokens=False)) == "a photo of a red car"


def test_chat_template_matches_prompt_builder(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is this?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == build_prompt("What is this?", [1]).with_placeholders


def test_config_loads_without_remote_code(tiny_model_dir):
    from transformers import AutoConfig

    from internvl_batch.engines.vllm.plugin import register

    register()
    cfg = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=False)
    assert type(cfg).__name__ == "InternVLChatConfig"
    assert cfg.llm_config.model_type == "qwen2"
    assert cfg.vision_config.image_size == 448


def test_hf_format_loads_in_transformers_native_class(tmp_path, tiny_model_dir):
    import torch
    from transformers import InternVLForConditionalGeneration

    hf_dir = make_tiny_model(tmp_path / "hf", seed=0, fmt="hf")
    model, info = InternVLForConditionalGeneration.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    original = _weights(tiny_model_dir)
    qkv = original["vision_model.encoder.layers.0.attn.qkv.weight"]
    k = model.state_dict()["model.vision_tower.encoder.layer.0.attention.k_proj.weight"]
    assert torch.equal(k, qkv.chunk(3)[1].to(k.dtype))
    vocab = json.loads((hf_dir / "config.json").read_text())["image_token_id"]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(hf_dir).convert_tokens_to_ids(IMG_CONTEXT) == vocab


@pytest.mark.parametrize("fmt", ["onnx", ""])
def test_unknown_format_is_refused(tmp_path, fmt):
    with pytest.raises(ValueError, match="format"):
        make_tiny_model(tmp_path / "x", fmt=fmt)
