"""Runs a job in three steps: plan (what is left to do), execute (stream it through the
pipeline into the sink), verify (every (id, task) exactly once) and only then `_SUCCESS`."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from internvl_batch.config import JobConfig
from internvl_batch.job.manifest import ManifestRow, read_manifest
from internvl_batch.job.output import OutputDir, PartWriter, new_run_id
from internvl_batch.job.records import item_schema, output_schema
from internvl_batch.status import Status

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


@dataclass
class Plan:
    rows: list[ManifestRow]
    items: pa.Table  # one ITEM per row with tasks left to do
    todo: int  # (id, task) pairs to do
    invalid: int  # of which invalid rows


def plan(cfg: JobConfig, out: OutputDir) -> Plan:
    tasks = [t.name for t in cfg.task]
    rows = read_manifest(cfg.input)
    done = out.done_keys(cfg.runtime.retry_failed)
    items = []
    for r in rows:
        todo = [t for t in tasks if (r.id, t) not in done]
        if todo:
            items.append(r.item(todo))
    table = pa.Table.from_pylist(items, schema=item_schema(cfg.input.passthrough))
    n_todo = sum(len(i["tasks"]) for i in items)
    invalid = sum(len(i["tasks"]) for i in items if i["status"] != Status.OK)
    return Plan(rows, table, n_todo, invalid)


class _Progress:
    def __init__(self, total: int, interval_s: float):
        self.total, self.interval_s = total, interval_s
        self.start = self.last = time.monotonic()
        self.rows = self.tokens = 0
        self.counts: Counter = Counter()
        self.stage_ms: Counter = Counter()

    def update(self, batch: pa.Table) -> None:
        self.rows += batch.num_rows
        self.counts.update(batch["status"].to_pylist())
        self.tokens += pa.compute.sum(batch["num_output_tokens"]).as_py() or 0
        self.stage_ms["preprocess"] += pa.compute.sum(batch["preprocess_ms"]).as_py() or 0.0
        self.stage_ms["engine"] += pa.compute.sum(batch["engine_ms"]).as_py() or 0.0
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            elapsed = now - self.start
            log.info("progress: %d/%d rows, %.2f rows/s, %.1f output tok/s, %s", self.rows, self.total,
                     self.rows / elapsed, self.tokens / elapsed, dict(self.counts))  # fmt: skip


def execute(cfg: JobConfig, p: Plan, writer: PartWriter, progress: _Progress) -> None:
    from internvl_batch.job.pipeline import build_dataset, init_ray

    ray = init_ray(cfg)
    for batch in build_dataset(ray, p.items, cfg, writer.run_id).iter_batches(batch_size=None, batch_format="pyarrow"):
        writer.add(batch)
        progress.update(batch)
    writer.flush()


def verify(cfg: JobConfig, p: Plan, out: OutputDir) -> tuple[Counter, int, int]:
    """(status counts, missing, duplicated) over the manifest's (id, task) pairs."""
    tasks = [t.name for t in cfg.task]
    keys = out.read_keys()
    pairs = list(zip(keys["id"].to_pylist(), keys["task"].to_pylist(), keys["status"].to_pylist()))
    expected = {(r.id, t) for r in p.rows for t in tasks}
    found = Counter((i, t) for i, t, _ in pairs)
    missing = len(expected - found.keys())
    dupes = sum(1 for k in expected if found[k] > 1)
    return Counter(s for i, t, s in pairs if (i, t) in expected), missing, dupes


def run_job(cfg: JobConfig, dry_run: bool = False) -> RunSummary:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tasks = [t.name for t in cfg.task]
    out = OutputDir(cfg.output.path, cfg.output.storage_options)
    if not dry_run:
        out.reconcile()  # a retry run that was killed may have left superseded rows
    p = plan(cfg, out)
    summary = RunSummary(finished=False, run_id=new_run_id(), manifest_rows=len(p.rows), tasks=tasks, todo_rows=p.todo)
    log.info("plan: %d manifest rows x %d task(s); %d already done; %d to do (%d invalid)", len(p.rows), len(tasks),
             len(p.rows) * len(tasks) - p.todo, p.todo, p.invalid)  # fmt: skip
    if dry_run:
        summary.finished = True
        print(json.dumps(asdict(summary), indent=2))
        return summary

    out.clear_success()
    writer = PartWriter(out, output_schema(cfg.input.passthrough), summary.run_id, cfg.output.rows_per_file,
                        cfg.output.flush_interval_s)  # fmt: skip
    progress = _Progress(p.todo, cfg.runtime.progress_interval_s)
    if p.items.num_rows:
        execute(cfg, p, writer, progress)
    out.reconcile()
    wall = time.monotonic() - progress.start
    counts, missing, dupes = verify(cfg, p, out)
    summary.written_this_run = writer.written
    summary.status_counts = dict(counts)
    summary.wall_s = round(wall, 2)
    summary.rows_per_s = round(writer.written / wall, 3) if wall else 0.0
    summary.output_tokens_per_s = round(progress.tokens / wall, 2) if wall else 0.0
    summary.stage_ms = {k: round(v, 1) for k, v in progress.stage_ms.items()}
    if missing or dupes:
        log.error("output incomplete: %d (id, task) missing, %d duplicated; rerun to resume", missing, dupes)
        return summary
    summary.finished = True
    out.write_success(asdict(summary))
    log.info("finished: %s", json.dumps(asdict(summary)))
    return summary
