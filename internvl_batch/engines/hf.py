"""The reference engine: transformers' native InternVL, no remote code.

It loads OpenGVLab's published layout by mapping tensor names at load time
(model/layout.py; InternLM2 LLMs run as Llama), so it runs the very checkpoints vLLM
runs. It does what `model.chat` does: the checkpoint's template, `tokenizer(query)`,
stop at the template separator only, the answer split on it and stripped. It is the
fidelity oracle in tests (same tiles, same prompt: same greedy tokens as vLLM) and a
fallback for machines without vLLM. One request at a time; not built for speed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from internvl_batch.engines.base import EngineBase, EngineRequest, EngineResult
from internvl_batch.engines.model_path import resolve_model_path
from internvl_batch.model.prompts import IMG_CONTEXT
from internvl_batch.model.tokenizer import load_tokenizer
from internvl_batch.status import Status

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig, SamplingConfig

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _local_dir(path: str) -> Path:
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "conversation.py"]
    return Path(snapshot_download(path, allow_patterns=patterns))


def _load_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    weights: dict = {}
    for shard in shards:
        weights.update(load_file(str(model_dir / shard)))
    return weights


def load_hf_model(model_dir: Path, dtype: str, image_token_id: int | None = None, long_rope: bool = False):
    """InternVLForConditionalGeneration from either layout (original or transformers').

    transformers switches a LongRoPE model's factors with the length as the card does;
    `long_rope` gives it long factors at every length instead (model.rope_factors: long)."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from internvl_batch.model.layout import map_state_dict, to_hf_layout

    config = json.loads((model_dir / "config.json").read_text())
    torch_dtype = getattr(torch, _DTYPES.get(dtype) or config.get("torch_dtype") or "bfloat16")
    if config.get("model_type") != "internvl_chat":
        if long_rope:
            raise ValueError("model.rope_factors: long is supported for the original checkpoint layout only")
        return InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype).eval()
    if long_rope:
        scaling = config["llm_config"]["rope_scaling"]
        scaling["short_factor"] = list(scaling["long_factor"])
    if image_token_id is None:
        image_token_id = load_tokenizer(model_dir).tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    hf_config, _ = to_hf_layout(config, {}, image_token_id=image_token_id)
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is loaded below; skip the random init
        model = InternVLForConditionalGeneration(InternVLConfig(**hf_config)).to(torch_dtype)
    weights = map_state_dict(_load_weights(model_dir), config["llm_config"])
    state = {k: v.to(torch_dtype) for k, v in weights.items()}
    if hf_config["tie_word_embeddings"]:
        state.setdefault("lm_head.weight", state["model.language_model.embed_tokens.weight"])
    model.load_state_dict(state, strict=True)
    return model.eval()


class HFEngine(EngineBase):
    def __init__(self, model: ModelConfig, sampling: SamplingConfig, reference: bool = False):
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise ImportError("the HF engine needs transformers and torch: pip install torch transformers") from e
        model_dir = _local_dir(resolve_model_path(model.path, model.download_dir, model.storage_options))
        super().__init__(model, sampling, model_dir, reference=reference)
        self.tokenizer = self.checkpoint.tokenizer.tokenizer
        long_rope = self.checkpoint.rope.kind == "longrope" and self.model.rope_factors == "long"
        image_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        self._model = load_hf_model(model_dir, model.dtype, image_token_id, long_rope=long_rope)

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        return [self.generate_one(r) for r in requests]

    def generate_one(self, req: EngineRequest, logits_processor=None) -> EngineResult:
        """`logits_processor`: also handed to transformers' generate (verify reads the scores)."""
        import torch

        from internvl_batch.media.normalize import normalize_tiles

        cfg = self.sampling_for(req)
        if cfg.json_schema is not None:
            return EngineResult.failed(
                req.id, Status.ENGINE_ERROR, "the HF engine has no JSON-schema decoding; use vllm"
            )
        ids = self.checkpoint.tokenizer.encode_prompt(req.prompt.text)
        failed = self.refusal(req, lambda: len(ids))
        if failed is not None:
            return failed
        inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if req.num_tiles:
            inputs["pixel_values"] = normalize_tiles(torch.from_numpy(req.tiles)).to(self._model.dtype)
        sampled = cfg.temperature > 0
        gen_kwargs = dict(
            max_new_tokens=min(cfg.max_tokens, self.max_model_len - len(ids)),
            min_new_tokens=cfg.min_tokens,
            do_sample=sampled,
            eos_token_id=self.stop_ids(self.tokenizer.get_vocab(), req),
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=cfg.repetition_penalty,
        )
        if logits_processor is not None:
            from transformers import LogitsProcessorList

            gen_kwargs["logits_processor"] = LogitsProcessorList([logits_processor])
        if sampled:
            gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=max(cfg.top_k, 0))
            gen_kwargs["num_return_sequences"] = cfg.n  # n > 1 needs sampling (config checks)
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
        with torch.inference_mode():
            outs = self._model.generate(**inputs, **gen_kwargs)[:, len(ids) :].tolist()
        stop_ids = set(gen_kwargs["eos_token_id"] or ())
        answers = []
        for out in outs:
            # Sequences that ended early are padded to the longest: cut after the first stop.
            end = next((i + 1 for i, t in enumerate(out) if t in stop_ids), len(out))
            out = out[:end]
            finish = "stop" if out and out[-1] in stop_ids else "length"
            answers.append((self.answer(req, out), finish, out))
        return EngineResult.answers(req.id, len(ids), answers)

    def shutdown(self) -> None:
        self._model = None
