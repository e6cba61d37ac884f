"""The one base class for a pipeline stage (after datatrove's PipelineStep).

A stage's logic (`process`, per batch) is separate from its resources (`StageResources`:
CPUs, GPUs, concurrency, batch size), which `pipeline.py` hands to Ray Data. A stage is
constructed once per Ray actor, so expensive set-up (filesystems, an engine) lives in
`__init__`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

Batch = Any  # a pyarrow.Table: stages read and write Arrow with explicit schemas (records.py)


@dataclass(frozen=True)
class StageResources:
    num_cpus: float
    concurrency: int
    batch_size: int
    num_gpus: int = 0

    def map_batches_kwargs(self) -> dict[str, Any]:
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "batch_format": "pyarrow",
        }


class Stage(ABC):
    name: ClassVar[str]

    def __call__(self, batch: Batch) -> Batch:
        return self.process(batch)

    @abstractmethod
    def process(self, batch: Batch) -> Batch: ...
