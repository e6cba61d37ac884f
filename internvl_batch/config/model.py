"""The model sections: which checkpoint and how one replica holds it, and how it samples."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from internvl_batch.config.base import Section, given, refuse_old_keys
from internvl_batch.model.checkpoint_facts import tiling_facts
from internvl_batch.model.workload import Workload

log = logging.getLogger(__name__)

# Keys this section no longer has, and where their job went.
_OLD_KEYS = {
    "engine": "is gone: jobs run vLLM (the HF reference engine is for tests and devtools: "
    "internvl_batch.devtools.hf_engine)",
    "enforce_eager": "is gone: pass it to vLLM as model.engine_kwargs: {enforce_eager: true}",
    "cpu_kvcache_gib": "is gone: the CPU build of vLLM sizes its KV cache from the environment "
    "variable VLLM_CPU_KVCACHE_SPACE (GiB), e.g. VLLM_CPU_KVCACHE_SPACE=2",
    "seed": "is gone: one seed, sampling.seed (per task)",
}


class ModelConfig(Section):
    """Which checkpoint, and how one replica of it is held."""

    path: str = Field(description="hub name (OpenGVLab/InternVL2_5-8B), local dir, or object-storage prefix (s3://...)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica; 26B/38B/78B need more than one")
    max_model_len: int = Field(8192, ge=512)
    max_num_seqs: int = Field(64, ge=1, description="sequences a replica decodes at once")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    quantization: Literal["awq", "awq_marlin", "gptq", "fp8"] | None = Field(
        None, description="e.g. 'awq' for OpenGVLab/InternVL2_5-78B-AWQ; None reads it from the checkpoint"
    )
    max_dynamic_patch: int = Field(
        12,
        ge=1,
        description="most tiles per image the engine accepts (thumbnail excluded); unset: the checkpoint's "
        "config.json (12, the card's, where it can't be read offline); a value that disagrees is used, with a warning",
    )
    max_images_per_prompt: int = Field(8, ge=1, description="images (or video frames) one prompt may carry")
    trust_remote_code: bool = Field(
        False,
        description="explicit opt-in; no published InternVL 1.5-3.5 checkpoint needs it (InternLM2 tokenizers "
        "are rebuilt from tokenizer.model); only a tokenizer that can't be rebuilt falls back to its remote code",
    )
    template: str | None = Field(
        None,
        description="conversation template (internvl2_5, Hermes-2, internlm2-chat, phi3-chat); "
        "None: the one the checkpoint's config.json names, as its conversation.py defines it",
    )
    extra_stop_tokens: tuple[str, ...] = Field(
        (),
        description="tokens that also end generation (e.g. '<|endoftext|>'); model.chat stops only at the "
        "template's separator",
    )
    rope_factors: Literal["card", "long"] = Field(
        "card",
        description="LongRoPE checkpoints (Phi-3: Mini-InternVL-Chat-4B-V1-5, InternVL2-4B): 'card' gives every "
        "sequence the factors the card's model uses for it (vLLM's max_model_len is capped at "
        "original_max_position_embeddings, and a job whose longest planned sequence exceeds it is refused); "
        "'long': long factors at every length, knowingly (answers within 4096 tokens differ from the card's)",
    )
    download_dir: str | None = Field(None, description="local cache for object-storage checkpoints")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for an object-storage `path` (credentials: use the environment)",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra vLLM engine arguments, for knobs not modelled here (e.g. enforce_eager: true "
        "skips CUDA graphs / torch.compile: faster start, slower steps)",
    )

    # Derived, never set by hand: what the job's config lets rows ask of the model
    # (JobConfig sets it; the engine checks its RoPE plan against it, model/rope.py).
    _workload: Workload | None = PrivateAttr(default=None)

    # Which engine runs the replicas: always vLLM for a job from a config file. Tests and
    # devtools run the HF reference engine through devtools/hf_engine.py; it is no field, so
    # no production config can pick the test oracle.
    _engine: Literal["vllm", "hf"] = PrivateAttr(default="vllm")

    @property
    def workload(self) -> Workload | None:
        return self._workload

    @property
    def engine(self) -> Literal["vllm", "hf"]:
        return self._engine

    @model_validator(mode="before")
    @classmethod
    def _old_keys_and_checkpoint_facts(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("engine") == "vllm":  # says what is so: older configs did
            data = {k: v for k, v in data.items() if k != "engine"}
        refuse_old_keys(data, "model", _OLD_KEYS)
        path = given(data, "path")
        if not isinstance(data, dict) or not isinstance(path, str):
            return data
        facts = tiling_facts(path)
        patch = data.get("max_dynamic_patch")
        if patch is None:
            return {**data, "max_dynamic_patch": facts.max_dynamic_patch}
        if facts.source is not None and patch != facts.max_dynamic_patch:
            log.warning(
                "model.max_dynamic_patch=%s disagrees with the checkpoint's max_dynamic_patch=%s (%s): using %s",
                patch, facts.max_dynamic_patch, facts.source, patch,
            )  # fmt: skip
        return data


class SamplingConfig(Section):
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, description="-1: off")
    max_tokens: int = Field(256, ge=1)
    min_tokens: int = Field(0, ge=0, description="no stop token or stop string ends an answer before this many tokens")
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = Field(None, description="constrain the answer to this JSON schema")
    n: int = Field(1, ge=1, description="answers per prompt (vLLM's n): output `responses`; `response` keeps the first")

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("top_k must be -1 (off) or >= 1")
        return v

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from jsonschema.exceptions import SchemaError
            from jsonschema.validators import validator_for

            try:
                validator_for(v).check_schema(v)
            except SchemaError as e:
                raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return v

    @model_validator(mode="after")
    def _n(self) -> SamplingConfig:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                f"n={self.n} with temperature=0 would give {self.n} identical greedy answers; "
                "set sampling.temperature > 0 (e.g. 0.8) to sample different ones"
            )
        return self

    @model_validator(mode="after")
    def _min_tokens(self) -> SamplingConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens} is more than max_tokens={self.max_tokens}")
        if self.min_tokens and self.json_schema is not None:
            # The grammar ends a JSON answer by forcing EOS, which min_tokens forbids.
            raise ValueError("min_tokens cannot be combined with json_schema")
        return self
