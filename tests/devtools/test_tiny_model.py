import json

import pytest
from safetensors import safe_open

from internvl_batch.devtools.tiny_model import FAMILIES, SPECIAL_TOKENS, make_tiny_model
from internvl_batch.model.prompts import IMG_CONTEXT, build_prompt
from tests.support.families import FAMILY_NAMES, render_chat_template

# What each twin mirrors: llm_config architecture, template, vision generation (qk-norm + RMSNorm: InternViT-6B)
MIRRORS = {
    "qwen2": ("Qwen2ForCausalLM", "internvl2_5", "layer_norm"),
    "internlm2": ("InternLM2ForCausalLM", "internvl2_5", "layer_norm"),
    "phi3": ("Phi3ForCausalLM", "phi3-chat", "layer_norm"),
    "llama3": ("LlamaForCausalLM", "Hermes-2", "rms_norm"),
    "qwen3": ("Qwen3ForCausalLM", "internvl2_5", "layer_norm"),
}


def _weights(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_seed_gives_same_bytes(tmp_path, twin_dirs, family):
    again = make_tiny_model(tmp_path / "again", seed=0, family=family)
    files = sorted(p.name for p in twin_dirs[family].iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (again / name).read_bytes() == (twin_dirs[family] / name).read_bytes(), name


def test_default_family_is_the_session_twin(tiny_model_dir, twin_dirs):
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (tiny_model_dir / name).read_bytes() == (twin_dirs["qwen2"] / name).read_bytes()


def test_other_seed_gives_other_weights(tmp_path, tiny_model_dir):
    other = make_tiny_model(tmp_path / "other", seed=1)
    a, b = _weights(tiny_model_dir), _weights(other)
    assert a.keys() == b.keys()
    assert not (a["mlp1.1.weight"] == b["mlp1.1.weight"]).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_small(twin_dirs, family):
    total = sum(f.stat().st_size for f in twin_dirs[family].iterdir())
    assert total < 5_000_000


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_is_the_published_layout(twin_dirs, family):
    cfg = json.loads((twin_dirs[family] / "config.json").read_text())
    arch, template, norm = MIRRORS[family]
    assert cfg["architectures"] == ["InternVLChatModel"] and cfg["model_type"] == "internvl_chat"
    assert cfg["template"] == template
    assert cfg["llm_config"]["architectures"] == [arch]
    assert (cfg["downsample_ratio"], cfg["ps_version"], cfg["max_dynamic_patch"]) == (0.5, "v2", 12)
    assert cfg["dynamic_image_size"] and cfg["use_thumbnail"]
    v = cfg["vision_config"]
    assert v["norm_type"] == norm and v["qk_normalization"] == (norm == "rms_norm")
    # 256 tokens per 448px tile: (448/14)^2 patches, pixel-shuffled by 0.5 in each direction
    assert (v["image_size"] // v["patch_size"]) ** 2 * cfg["downsample_ratio"] ** 2 == 256


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_weight_names_follow_published_checkpoints(twin_dirs, family):
    names = _weights(twin_dirs[family]).keys()
    assert {n.split(".")[0] for n in names} == {"vision_model", "mlp1", "language_model"}
    layer = "language_model.model.layers.0."
    expected = {
        "qwen2": [layer + "self_attn.q_proj.bias", "language_model.lm_head.weight"],
        "internlm2": [
            layer + "attention.wqkv.weight",
            layer + "feed_forward.w1.weight",
            "language_model.output.weight",
        ],
        "phi3": [layer + "self_attn.qkv_proj.weight", layer + "mlp.gate_up_proj.weight"],
        "llama3": [layer + "self_attn.q_proj.weight", "vision_model.encoder.layers.0.attn.q_norm.weight"],
        "qwen3": [layer + "self_attn.q_norm.weight", layer + "self_attn.k_norm.weight"],
    }[family]
    assert set(expected) <= set(names)
    assert ("vision_model.encoder.layers.0.attn.qkv.bias" in names) == (family != "llama3")


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="family"):
        make_tiny_model(tmp_path / "x", family="mixtral")


def test_qwen2_tokenizer_has_internvl_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = tok.get_vocab()
    for t in SPECIAL_TOKENS:
        assert t in vocab, t
        assert tok.encode(t, add_special_tokens=False) == [vocab[t]]  # never split
    assert tok.eos_token == "<|im_end|>"
    assert tok.decode(tok.encode("a photo of a red car", add_special_tokens=False)) == "a photo of a red car"


def test_phi3_end_is_not_special_and_eats_the_newline(twin_dirs):
    """Phi-3's quirks, as published: `<|end|>` is no special token (so decoding keeps it,
    and only the separator split removes it), and role tokens strip the whitespace after them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(twin_dirs["phi3"])
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end not in tok.all_special_ids
    assert tok.decode([end], skip_special_tokens=True) == "<|end|>"
    assert tok.encode("<|user|>\nhi", add_special_tokens=False) == tok.encode("<|user|>hi", add_special_tokens=False)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_chat_template_matches_prompt_builder(twin_dirs, family):
    template = FAMILIES[family].template
    rendered = render_chat_template(twin_dirs[family], "<image>\nWhat is this?")
    assert rendered == build_prompt("What is this?", [1], template=template).with_placeholders


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_config_loads_without_remote_code(twin_dirs, family):
    from transformers import AutoConfig

    from internvl_batch.engines.vllm.plugin import register

    register()
    cfg = AutoConfig.from_pretrained(twin_dirs[family], trust_remote_code=False)
    assert type(cfg).__name__ == "InternVLChatConfig"
    assert cfg.llm_config.architectures == [MIRRORS[family][0]]
    assert cfg.vision_config.image_size == 448


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hf_format_loads_in_transformers_native_class(tmp_path, twin_dirs, family):
    import torch
    from transformers import InternVLForConditionalGeneration

    from internvl_batch.model.tokenizer import load_tokenizer

    hf_dir = make_tiny_model(tmp_path / "hf", seed=0, fmt="hf", family=family)
    model, info = InternVLForConditionalGeneration.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    original = _weights(twin_dirs[family])
    qkv = original["vision_model.encoder.layers.0.attn.qkv.weight"]
    k = model.state_dict()["model.vision_tower.encoder.layer.0.attention.k_proj.weight"]
    assert torch.equal(k, qkv.chunk(3)[1].to(k.dtype))
    image_token_id = json.loads((hf_dir / "config.json").read_text())["image_token_id"]
    assert (
        load_tokenizer(hf_dir, cache_dir=tmp_path / "tok").tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        == image_token_id
    )


@pytest.mark.parametrize("fmt", ["onnx", ""])
def test_unknown_format_is_refused(tmp_path, fmt):
    with pytest.raises(ValueError, match="format"):
        make_tiny_model(tmp_path / "x", fmt=fmt)
