"""The original layout mapped onto transformers' classes: InternLM2 as Llama."""

import torch

from internvl_batch.model.layout import hf_text_config, map_state_dict


def test_internlm2_wqkv_splits_into_the_heads_its_attention_uses():
    heads, kv, head_dim, hidden = 8, 2, 4, 16
    cfg = {"num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": heads * head_dim}
    wqkv = torch.randn(kv * (heads // kv + 2) * head_dim, hidden)
    x = torch.randn(3, hidden)
    # InternLM2's forward: rows grouped as (kv head, [its query heads..., key, value], head_dim)
    grouped = (x @ wqkv.T).view(3, kv, heads // kv + 2, head_dim)
    q_ref = grouped[:, :, :-2].reshape(3, heads, head_dim)
    k_ref, v_ref = grouped[:, :, -2], grouped[:, :, -1]

    out = map_state_dict({"language_model.model.layers.0.attention.wqkv.weight": wqkv}, cfg)
    p = "model.language_model.layers.0.self_attn."
    # Llama's forward: query head i attends with key/value head i // (heads // kv)
    assert torch.allclose((x @ out[p + "q_proj.weight"].T).view(3, heads, head_dim), q_ref)
    assert torch.allclose((x @ out[p + "k_proj.weight"].T).view(3, kv, head_dim), k_ref)
    assert torch.allclose((x @ out[p + "v_proj.weight"].T).view(3, kv, head_dim), v_ref)


def test_internlm2_names_and_config_become_llamas():
    w = torch.zeros(1)
    names = {
        "language_model.model.tok_embeddings.weight": "model.language_model.embed_tokens.weight",
        "language_model.model.layers.3.attention.wo.weight": "model.language_model.layers.3.self_attn.o_proj.weight",
        "language_model.model.layers.3.feed_forward.w1.weight": "model.language_model.layers.3.mlp.gate_proj.weight",
        "language_model.model.layers.3.feed_forward.w3.weight": "model.language_model.layers.3.mlp.up_proj.weight",
        "language_model.model.layers.3.feed_forward.w2.weight": "model.language_model.layers.3.mlp.down_proj.weight",
        "language_model.model.layers.3.attention_norm.weight": "model.language_model.layers.3.input_layernorm.weight",
        "language_model.model.layers.3.ffn_norm.weight": "model.language_model.layers.3.post_attention_layernorm.weight",
        "language_model.model.norm.weight": "model.language_model.norm.weight",
        "language_model.output.weight": "lm_head.weight",
    }
    assert set(map_state_dict(dict.fromkeys(names, w))) == set(names.values())
    llama = hf_text_config({"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
                            "hidden_size": 8, "rope_scaling": {"type": "dynamic", "factor": 2.0}})  # fmt: skip
    assert llama["model_type"] == "llama" and llama["attention_bias"] is False and llama["mlp_bias"] is False
    assert llama["rope_scaling"] == {"type": "dynamic", "factor": 2.0}


def test_phi3_su_rope_loads_in_transformers_5():
    """InternVL2-4B / Mini-InternVL-4B call Phi-3's longrope "su"; transformers 5 rejects it."""
    from transformers import Phi3Config

    llm = {"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 2, "original_max_position_embeddings": 4096,
           "max_position_embeddings": 131072, "rope_scaling": {"type": "su", "short_factor": [1.0] * 16,
                                                               "long_factor": [2.0] * 16}}  # fmt: skip
    config = Phi3Config(**{k: v for k, v in hf_text_config(llm).items() if k != "model_type"})
    assert config.rope_parameters["rope_type"] == "longrope"
    assert llm["rope_scaling"]["type"] == "su"  # the checkpoint's dict is not changed
