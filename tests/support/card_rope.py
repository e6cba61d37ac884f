"""The rotary embedding of the cards' own Phi-3 code (`Phi3SuScaledRotaryEmbedding` in the
checkpoints' modeling_phi3.py, transformers 4.37-4.40), restated as an oracle.

Every forward pass: seq_len = max(position_ids) + 1; `long_factor` if seq_len exceeds
`original_max_position_embeddings`, else `short_factor`; inv_freq = 1 / (factor *
base^(2i/dim)); cos/sin scaled by sqrt(1 + ln(s) / ln(original)), s = max_position_embeddings
/ original (1 when s <= 1). Written from that description, not from the package.
"""

from __future__ import annotations

import math

import torch


class CardSuRope:
    def __init__(self, llm_config: dict):
        heads = llm_config["num_attention_heads"]
        self.dim = llm_config["hidden_size"] // heads
        self.base = llm_config.get("rope_theta", 10000.0)
        self.short = llm_config["rope_scaling"]["short_factor"]
        self.long = llm_config["rope_scaling"]["long_factor"]
        self.original = llm_config["original_max_position_embeddings"]
        scale = llm_config["max_position_embeddings"] / self.original
        self.mscale = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(self.original))

    def factors_for(self, position_ids: torch.Tensor) -> list[float]:
        return self.long if int(position_ids.max()) + 1 > self.original else self.short

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ext = torch.tensor(self.factors_for(position_ids), dtype=torch.float32)
        inv_freq = 1.0 / (ext * self.base ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim))
        freqs = inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1) @ position_ids[:, None, :].float()
        emb = torch.cat((freqs.transpose(1, 2), freqs.transpose(1, 2)), dim=-1)
        return (emb.cos() * self.mscale).to(x.dtype), (emb.sin() * self.mscale).to(x.dtype)
