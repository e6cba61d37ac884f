"""One model replica per Ray actor: its resources, and the actor class that owns it.

The engine is built once per actor (in `__init__`, the actor's own process, after Ray
has pinned its GPUs) and shut down explicitly. Tensor parallelism stays inside one node:
the actor asks for TP GPUs and vLLM's multiprocessing executor spreads the model over
the GPUs Ray made visible to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from internvl_batch.config import ModelConfig, SamplingConfig
from internvl_batch.engines.base import EngineRequest, EngineResult, build_engine


@dataclass(frozen=True)
class ReplicaResources:
    num_gpus: int
    num_cpus: float

    def ray_options(self) -> dict[str, Any]:
        return {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus}


def replica_resources(model: ModelConfig, *, use_gpu: bool, num_cpus: float = 1.0) -> ReplicaResources:
    """GPUs = tensor-parallel size on a GPU cluster; none with the CPU build."""
    return ReplicaResources(num_gpus=model.tensor_parallel_size if use_gpu else 0, num_cpus=num_cpus)


class EngineReplica:
    """Owns one engine for the life of its actor."""

    def __init__(self, model: ModelConfig | dict, sampling: SamplingConfig | dict):
        model = model if isinstance(model, ModelConfig) else ModelConfig.model_validate(model)
        sampling = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig.model_validate(sampling)
        self._engine = build_engine(model, sampling)

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        return self._engine.generate(requests)

    def shutdown(self) -> None:
        self._engine.shutdown()


def start_replica(model: ModelConfig, sampling: SamplingConfig, *, use_gpu: bool):
    """A Ray actor holding one replica (Ray must be initialised)."""
    import ray

    opts = replica_resources(model, use_gpu=use_gpu).ray_options()
    # max_concurrency=1: one batch at a time per replica; vLLM batches inside it.
    return ray.remote(EngineReplica).options(**opts, max_concurrency=1).remote(model, sampling)
