"""The runtime section: how the job uses Ray (replicas, workers, batches), and under
`advanced` the few Ray Data internals one rarely needs to touch."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, model_validator

from internvl_batch.config.base import Section, refuse_old_keys
from internvl_batch.config.model import ModelConfig

log = logging.getLogger(__name__)


class AdvancedRuntimeConfig(Section):
    """Ray Data internals, set to what the job needs; change one only to work around a
    problem you have measured (each one set to another value logs a warning at config load)."""

    op_resource_reservation: bool = Field(
        False, description="Ray Data's per-operator reservation; off lets small nodes run CPU work in parallel"
    )
    reader_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs reserved per manifest reader; 0: readers are few and wait on storage, and "
        "must never wait for a CPU the CPU and engine stages hold",
    )
    block_kib: int = Field(
        1024,
        ge=1,
        description="Ray Data's target block size: small, so one split's rows spread over several "
        "CPU workers (a row with tiles is one block on its own)",
    )

    @model_validator(mode="after")
    def _warn(self) -> AdvancedRuntimeConfig:
        defaults = type(self).model_fields
        for name in sorted(n for n in self.model_fields_set if getattr(self, n) != defaults[n].default):
            log.warning(
                "runtime.advanced.%s=%r is set: a Ray Data internal the job sizes itself (default %r); "
                "keep it only for a problem you have measured",
                name, getattr(self, name), defaults[name].default,
            )  # fmt: skip
        return self


_MOVED = {k: f"moved to runtime.advanced.{k}" for k in AdvancedRuntimeConfig.model_fields}


class RuntimeConfig(Section):
    ray_address: str | None = Field(None, description="None: start/join a local Ray; 'auto': the cluster's")
    use_gpu: bool = Field(True, description="replicas ask Ray for GPUs; false with the CPU build of vLLM")
    replicas: int = Field(1, ge=1, description="engine actors, one model replica each")
    cpu_workers: int = Field(2, ge=1, description="concurrent preprocess (fetch/decode/tile) workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    preprocess_batch_size: int = Field(
        4,
        ge=1,
        description="sizes the tables manifest readers hand on (16x this, at most 4096 rows); the CPU stage "
        "takes whole blocks of them and keeps preprocess.fetch.concurrency fetches in flight across a block",
    )
    engine_batch_size: int = Field(
        ModelConfig.model_fields["max_num_seqs"].default,
        ge=1,
        description="rows per engine call; unset: model.max_num_seqs (below it vLLM's batch is never full)",
    )
    engine_cpus: float = Field(1.0, ge=0, description="CPUs reserved for each engine actor")
    retry_failed: bool = Field(False, description="redo rows whose status is not ok")
    progress_interval_s: float = Field(10.0, gt=0)
    readers: int = Field(2, ge=1, description="concurrent manifest readers (each parses one split at a time)")
    engine_batches_in_flight: int | None = Field(
        None,
        ge=1,
        description="batches each replica holds at once, so vLLM's queue never runs dry between batches; "
        "None: enough for 8 x model.max_num_seqs requests (at least 4 batches): a batch stays in flight "
        "until its longest answer ends, and at 4x occupancy fell to 0.91 with mixed answer lengths "
        "(benchmarks/engine_feed.py), at 8x it held 0.98",
    )
    max_engine_restarts: int = Field(
        3, ge=0, description="engine deaths in a row (no batch finished in between) before the job fails"
    )
    stall_timeout_s: float = Field(
        1800.0, gt=0, description="fail the job, naming the stage, when no row reaches the output for this long"
    )
    advanced: AdvancedRuntimeConfig = Field(
        default_factory=AdvancedRuntimeConfig,
        description="Ray Data internals (op_resource_reservation, reader_cpus, block_kib): rarely needed",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        refuse_old_keys(data, "runtime", _MOVED)
        return data
