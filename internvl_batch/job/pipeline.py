"""Wires the stages into Ray Data; nothing else. manifest items -> prepare (CPU actors) ->
inference (engine actors) -> a stream of output tables for the sink.

The stages' logic lives in job/stages, their resources come from the config here.
"""

from __future__ import annotations

import math

import pyarrow as pa

from internvl_batch.config import JobConfig
from internvl_batch.job.stages.base import StageResources


def stage_resources(cfg: JobConfig) -> tuple[StageResources, StageResources]:
    rt = cfg.runtime
    prepare = StageResources(
        num_cpus=rt.cpus_per_worker, concurrency=rt.cpu_workers, batch_size=rt.preprocess_batch_size
    )
    # One replica per actor: it asks for TP GPUs and vLLM spreads the model over the GPUs
    # Ray made visible to it; none with the CPU build.
    inference = StageResources(
        num_cpus=rt.engine_cpus,
        num_gpus=cfg.model.tensor_parallel_size if rt.use_gpu else 0,
        concurrency=rt.replicas,
        batch_size=rt.engine_batch_size,
    )
    return prepare, inference


def init_ray(cfg: JobConfig):
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.runtime.ray_address, include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    # Ray Data's per-operator reservation keeps CPU for operators that are not running
    # yet; on a small node it serialises the CPU stage (measured: 0.98x vs 1.31x a loop).
    ctx.op_resource_reservation_enabled = cfg.runtime.op_resource_reservation
    ctx.enable_progress_bars = False
    return ray


def build_dataset(ray, items: pa.Table, cfg: JobConfig, run_id: str):
    from internvl_batch.job.stages.inference import InferenceStage
    from internvl_batch.job.stages.prepare import PrepareStage

    prepare, inference = stage_resources(cfg)
    passthrough = cfg.input.passthrough
    n = items.num_rows
    # A small manifest would otherwise be one block, processed by one CPU worker.
    blocks = max(1, min(n, max(prepare.concurrency * 4, math.ceil(n / prepare.batch_size))))
    size = math.ceil(n / blocks)
    ds = ray.data.from_arrow([items.slice(i, size) for i in range(0, n, size)])
    # Two actor pools with different resources: Ray never fuses them, so decoding and
    # tiling never run in the engine's process.
    ds = ds.map_batches(PrepareStage, fn_constructor_args=(cfg.preprocess, passthrough), **prepare.map_batches_kwargs())
    return ds.map_batches(
        InferenceStage, fn_constructor_args=(cfg.model, cfg.task, passthrough, run_id), **inference.map_batches_kwargs()
    )
