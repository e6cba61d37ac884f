"""Model replicas: engines take preprocessed requests and return results.

They know nothing of Ray, shards or manifests. `build_engine` builds vLLM's, or the HF
reference engine for a model section devtools/hf_engine.py marked (tests, devtools: never
a config file); the engine modules are imported only when built (they import torch / vLLM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from internvl_batch.engines.base import Engine, EngineFatalError, EngineRequest, EngineResult

if TYPE_CHECKING:
    from internvl_batch.config import ModelConfig, SamplingConfig

__all__ = ["Engine", "EngineFatalError", "EngineRequest", "EngineResult", "build_engine"]


def build_engine(model: ModelConfig, sampling: SamplingConfig) -> Engine:
    if model.engine == "vllm":
        from internvl_batch.engines.vllm.engine import VLLMEngine

        return VLLMEngine(model, sampling)
    from internvl_batch.engines.hf import HFEngine

    return HFEngine(model, sampling)
