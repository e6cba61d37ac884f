"""The base classes of a pipeline stage (after datatrove's PipelineStep).

A stage's logic (`process`, per batch) is separate from its resources (`StageResources`:
CPUs, GPUs, concurrency, batch size, batches in flight), which `job/pipeline.py` hands to
Ray Data. A stage is constructed once per Ray actor, so expensive set-up (filesystems,
an engine) lives in `__init__`. `process` returns a table, or yields several (a reader);
an `AsyncStage` awaits its work, so one actor holds several batches at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from internvl_batch.job.monitor import MonitorClient

Batch = Any  # a pyarrow.Table: stages read and write Arrow with explicit schemas (records.py)


@dataclass(frozen=True)
class StageResources:
    num_cpus: float
    concurrency: int
    batch_size: int | None  # None: whole blocks
    num_gpus: int = 0
    in_flight: int = 1  # batches one actor works on at once (async stages)
    env: tuple[tuple[str, str], ...] = ()  # environment variables of the stage's actor processes

    def map_batches_kwargs(self) -> dict[str, Any]:
        kwargs = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "batch_size": self.batch_size,
            "batch_format": "pyarrow",
        }
        if self.env:
            kwargs["runtime_env"] = {"env_vars": dict(self.env)}
        if self.in_flight > 1:
            from ray.data import ActorPoolStrategy

            # max_concurrency lets the actor run that many batches at once; the pool must
            # also send it that many (Ray Data LLM wires its engine stage the same way).
            kwargs["compute"] = ActorPoolStrategy(size=self.concurrency, max_tasks_in_flight_per_actor=self.in_flight)
            kwargs["max_concurrency"] = self.in_flight
        else:
            kwargs["concurrency"] = self.concurrency
        return kwargs


class Stage(ABC):
    name: ClassVar[str]
    monitor: MonitorClient = MonitorClient(None)

    def attach_monitor(self, name: str | None) -> None:
        """Every stage's constructor calls this: progress and failures go to the job monitor,
        and a failed job can end this actor (runner._end_pipeline)."""
        self.monitor = MonitorClient(name)
        self.monitor.join()

    def __call__(self, batch: Batch) -> Batch:
        return self.process(batch)

    @abstractmethod
    def process(self, batch: Batch) -> Batch: ...


class AsyncStage(Stage):
    async def __call__(self, batch: Batch) -> Batch:
        return await self.process(batch)

    @abstractmethod
    async def process(self, batch: Batch) -> Batch: ...
