"""Wires the stages into Ray Data: manifest -> preprocess (CPU actors) -> inference (engine
actors) -> parquet parts committed by the driver -> `_SUCCESS` last.

This module only wires; the logic lives in manifest.py, stages/ and output.py.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from internvl_batch.config import JobConfig
from internvl_batch.engines.replica import replica_resources
from internvl_batch.manifest import ManifestRow, read_manifest
from internvl_batch.output import OutputDir, PartWriter, new_run_id, output_schema
from internvl_batch.stages.base import StageResources

log = logging.getLogger("internvl_batch")


@dataclass
class RunSummary:
    finished: bool
    run_id: str
    manifest_rows: int
    tasks: list[str]
    todo_rows: int
    written_this_run: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    rows_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)


def work_items(rows: list[ManifestRow], tasks: list[str], done: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """One item per manifest row with tasks left to do (all tasks of a row share its media)."""
    items = []
    for r in rows:
        todo = [t for t in tasks if (r.id, t) not in done]
        if not todo:
            continue
        items.append({
            "id": r.id, "images": r.images or None, "video": r.video, "start": r.start, "end": r.end,
            "question": r.question, "media": r.media, "tasks": todo,
            "status": "ok" if r.error is None else "invalid_row", "error": r.error,
            "passthrough_json": json.dumps(r.passthrough),
        })  # fmt: skip
    return items


def stage_resources(cfg: JobConfig) -> tuple[StageResources, StageResources]:
    rt = cfg.runtime
    pre = StageResources(num_cpus=rt.cpus_per_worker, concurrency=rt.cpu_workers, batch_size=rt.preprocess_batch_size)
    replica = replica_resources(cfg.model, use_gpu=rt.use_gpu, num_cpus=rt.engine_cpus)
    inf = StageResources(
        num_cpus=replica.num_cpus, num_gpus=replica.num_gpus, concurrency=rt.replicas, batch_size=rt.engine_batch_size
    )
    return pre, inf


def _init_ray(cfg: JobConfig):
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.runtime.ray_address, include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    # Ray Data's per-operator reservation keeps CPU for operators that are not running
    # yet; on a small node it serialises the CPU stage (measured: 0.98x vs 1.31x a loop).
    ctx.op_resource_reservation_enabled = cfg.runtime.op_resource_reservation
    ctx.enable_progress_bars = False
    return ray


def build_dataset(ray, items: list[dict[str, Any]], cfg: JobConfig):
    from internvl_batch.stages.inference import InferenceStage
    from internvl_batch.stages.preprocess import PreprocessStage

    pre, inf = stage_resources(cfg)
    # A small manifest would otherwise be one block, processed by one CPU worker.
    blocks = max(1, min(len(items), max(pre.concurrency * 4, math.ceil(len(items) / pre.batch_size))))
    import pyarrow as pa

    from internvl_batch.stages.records import ITEM_SCHEMA

    table = pa.Table.from_pylist(items, schema=ITEM_SCHEMA)
    size = math.ceil(len(items) / blocks)
    ds = ray.data.from_arrow([table.slice(i, size) for i in range(0, len(items), size)])
    # Two actor pools with different resources: Ray never fuses them, so decoding and
    # tiling never run in the engine's process.
    ds = ds.map_batches(PreprocessStage, fn_constructor_args=(cfg.preprocess,), **pre.map_batches_kwargs())
    return ds.map_batches(InferenceStage, fn_constructor_args=(cfg.model, cfg.task), **inf.map_batches_kwargs())


class _Progress:
    def __init__(self, total: int, interval_s: float):
        self.total, self.interval_s = total, interval_s
        self.start = self.last = time.monotonic()
        self.rows = self.tokens = 0
        self.counts: Counter = Counter()
        self.stage_ms: Counter = Counter()

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.rows += len(rows)
        for r in rows:
            self.counts[r["status"]] += 1
            self.tokens += r["num_output_tokens"] or 0
            self.stage_ms["preprocess"] += r["preprocess_ms"] or 0.0
            self.stage_ms["engine"] += r["engine_ms"] or 0.0
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            log.info("progress: %d/%d rows, %.2f rows/s, %.1f output tok/s, %s", self.rows, self.total,
                     self.rows / (now - self.start), self.tokens / (now - self.start), dict(self.counts))


def run_job(cfg: JobConfig, dry_run: bool = False) -> RunSummary:
    from internvl_batch.stages.inference import result_rows

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = [t.name for t in cfg.task]
    out = OutputDir(cfg.output.path, cfg.output.storage_options)
    schema = output_schema(cfg.input.passthrough)
    rows = read_manifest(cfg.input)
    if not dry_run:
        out.reconcile()  # a retry run that was killed may have left superseded rows
    done = out.done_keys(cfg.runtime.retry_failed)
    items = work_items(rows, tasks, done)
    todo = sum(len(i["tasks"]) for i in items)
    summary = RunSummary(finished=False, run_id=new_run_id(), manifest_rows=len(rows), tasks=tasks, todo_rows=todo)
    log.info("plan: %d manifest rows x %d task(s); %d already done; %d to do (%d invalid)", len(rows), len(tasks),
             len(rows) * len(tasks) - todo, todo, sum(len(i["tasks"]) for i in items if i["status"] != "ok"))
    if dry_run:
        summary.finished = True
        print(json.dumps(asdict(summary), indent=2))
        return summary

    out.clear_success()
    writer = PartWriter(out, schema, summary.run_id, cfg.output.rows_per_file, cfg.output.flush_interval_s)
    progress = _Progress(todo, cfg.runtime.progress_interval_s)
    if items:
        ray = _init_ray(cfg)
        for batch in build_dataset(ray, items, cfg).iter_batches(batch_size=None, batch_format="pyarrow"):
            produced = result_rows(batch, cfg.model.path, cfg.input.passthrough)
            writer.add(produced)
            progress.update(produced)
        writer.flush()
    out.reconcile()
    wall = time.monotonic() - progress.start
    keys = out.read_keys()
    pairs = list(zip(keys["id"].to_pylist(), keys["task"].to_pylist(), keys["status"].to_pylist()))
    expected = {(r.id, t) for r in rows for t in tasks}
    found = Counter((i, t) for i, t, _ in pairs)
    missing = expected - found.keys()
    dupes = [k for k in expected if found[k] > 1]
    summary.written_this_run = writer.written
    summary.status_counts = dict(Counter(s for i, t, s in pairs if (i, t) in expected))
    summary.wall_s = round(wall, 2)
    summary.rows_per_s = round(writer.written / wall, 3) if wall else 0.0
    summary.output_tokens_per_s = round(progress.tokens / wall, 2) if wall else 0.0
    summary.stage_ms = {k: round(v, 1) for k, v in progress.stage_ms.items()}
    if missing or dupes:
        log.error("output incomplete: %d (id, task) missing, %d duplicated; rerun to resume", len(missing), len(dupes))
        return summary
    summary.finished = True
    out.write_success(asdict(summary))
    log.info("finished: %s", json.dumps(asdict(summary)))
    return summary
