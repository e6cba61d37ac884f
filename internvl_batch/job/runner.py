"""Runs a job: plan (what is left, per shard), execute (stream it through the pipeline into
the sink, watched by the monitor), verify (every shard's ledger entry holds every row x
task) and only then `_SUCCESS`.

The driver holds the plan (O(shards)), the sink's open shards and counters: nothing that
grows with the manifest's rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from internvl_batch.config import JobConfig
from internvl_batch.engines.occupancy import combine
from internvl_batch.job.dedup import find_duplicates, shards_key
from internvl_batch.job.monitor import JobFailed, actor_states, stalled_stage, start_monitor
from internvl_batch.job.openai_output import FOLDER as OPENAI_FOLDER
from internvl_batch.job.openai_output import write_responses
from internvl_batch.job.output import STATE, OutputDir, new_run_id
from internvl_batch.job.plan import Plan, make_plan, read_splits
from internvl_batch.job.sink import ShardSink
from internvl_batch.observe import metrics
from internvl_batch.observe.progress import Progress
from internvl_batch.observe.report import write_report
from internvl_batch.observe.timeline import Timeline
from internvl_batch.records import output_schema
from internvl_batch.storage import retry
from internvl_batch.storage.redact import redacted, scrub

log = logging.getLogger("internvl_batch")

_DONE = object()
_POLL_S = 1.0


@dataclass
class RunSummary:
    finished: bool
    run_id: str
    plan: dict[str, Any]
    written_this_run: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    duplicate_ids: int = 0
    wall_s: float = 0.0
    pairs_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    prompt_tokens_per_s: float = 0.0
    tiles_per_s: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)  # replicas and GPUs: what `plan` scales rates by
    started_at: str = ""  # UTC, ISO 8601: when this run's pipeline started
    ended_at: str = ""
    gpu_hours: float = 0.0  # wall clock x replicas x GPUs per replica (the GPUs reserved, busy or not)

    @property
    def todo_rows(self) -> int:
        return self.plan.get("rows_x_tasks_to_do", 0)


# A dry run cuts new manifest files into shards on the driver when they hold at most this
# much; a larger plan (or any real run) cuts them in Ray tasks, on the cluster's CPUs.
DRY_RUN_LOCAL_BYTES = 256 * 1024**2


def _utc(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _ray_mapper(cfg: JobConfig, num_cpus: float):
    """Ray tasks, with Ray started on first use: a run that finds its plan cached, or fails
    on a missing manifest, says so before a cluster starts."""
    from internvl_batch.job.pipeline import init_ray

    def mapper(fn, items):
        ray = init_ray(cfg)
        task = ray.remote(fn).options(num_cpus=num_cpus)
        return ray.get([task.remote(i) for i in items])

    return mapper


def plan_text(plan: dict[str, Any]) -> str:
    """The plan for a person: what the manifest holds, what is done, and one sentence on what is left."""
    s = plan["shards"]
    left = plan["rows_x_tasks_to_do"]
    return "\n".join([
        f"manifest: {plan['manifest_files']} file(s), {plan['manifest_rows']:,} rows x {len(plan['tasks'])} task(s) "
        f"({', '.join(plan['tasks'])})",
        f"shards: {s['total']} in all, {s['done']} done, {s['todo']} to do, {s['resume']} to resume, {s['redo']} to redo",
        f"{left:,} row x task pairs to do." if left else "Nothing left to do: every row x task pair is in the output.",
    ])  # fmt: skip


def _duplicates(ray, cfg: JobConfig, plan: Plan, out: OutputDir) -> tuple[str | None, int]:
    """The cached losers file of this plan, computed once (see job/dedup.py)."""
    name = f"{STATE}/duplicates-{shards_key(plan.shards, cfg.input.id_column)}.parquet"
    marker = out.read_json(name + ".json")
    if marker is None:
        index = {s.id: i for i, s in enumerate(plan.shards)}
        # Occurrences in shards that already have output win: earlier runs decided so.
        ranks = {sid: ((0 if sid in plan.with_output else 1) << 62) | (i << 32) for sid, i in index.items()}
        splits = read_splits(plan.files, plan.shards)
        start = time.monotonic()
        n = find_duplicates(ray, cfg.input, splits, ranks, plan.rows, (out.url, cfg.output.storage_options), name, 1.0)
        out.write_json(name + ".json", {"duplicates": n})
        log.info("plan: duplicate-id check over %d rows: %d repeated id(s) in %.1fs", plan.rows, n,
                 time.monotonic() - start)  # fmt: skip
        marker = {"duplicates": n}
    return (name if marker["duplicates"] else None), marker["duplicates"]


def default_stages() -> dict[str, Any]:
    from internvl_batch.job.stages.inference import InferenceStage
    from internvl_batch.job.stages.prepare import PrepareStage
    from internvl_batch.job.stages.read import ReadStage

    return {"read": ReadStage, "prepare": PrepareStage, "inference": InferenceStage}


def _stage_args(cfg: JobConfig, out: OutputDir, run_id: str, duplicates: str | None, monitor: str):
    from internvl_batch.job.pipeline import reader_chunk_rows

    tasks = [t.name for t in cfg.task]
    out_spec = (out.url, cfg.output.storage_options)
    return {
        "read": (
            cfg.input,
            tasks,
            out_spec,
            cfg.runtime.retry_failed,
            duplicates,
            reader_chunk_rows(cfg),
            monitor,
            cfg.prompt_columns(),
        ),
        "prepare": (cfg.preprocess, cfg.input.passthrough, monitor),
        "inference": (cfg.model, cfg.task, cfg.input.passthrough, run_id, monitor),
    }


def execute(ray, cfg: JobConfig, plan: Plan, sink: ShardSink, progress: Progress, stages, args, monitor) -> None:
    """Stream results into the sink; fail fast (never hang) on a dead engine or a stall."""
    from internvl_batch.job.pipeline import build_dataset

    ds = build_dataset(ray, cfg, plan.splits, stages, args)
    results: queue.Queue = queue.Queue(maxsize=8)

    def pump() -> None:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                results.put(batch)
            results.put(_DONE)
        except BaseException as e:  # handed to the control loop, which owns the failure
            results.put(e)

    threading.Thread(target=pump, name="pipeline-results", daemon=True).start()
    last_output = last_poll = time.monotonic()
    while True:
        try:
            item = results.get(timeout=_POLL_S)
        except queue.Empty:
            item = None
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            snap = _snapshot(ray, monitor)
            cause = snap.get("fatal") or snap.get("last_engine_failure")
            failure = f"the pipeline failed: {type(item).__name__}: {item}" + (f" (cause: {cause})" if cause else "")
            raise JobFailed(scrub(failure, cfg.secret_values()))
        now = time.monotonic()
        if item is not None:
            sink.add(item)
            progress.update(item)
            last_output = now
        else:
            sink.flush_due()
        progress.maybe_log(sink.open_shards)
        if now - last_poll >= _POLL_S:
            last_poll = now
            snap = _snapshot(ray, monitor)
            progress.observe(snap)
            if snap.get("fatal"):
                raise JobFailed(scrub(snap["fatal"], cfg.secret_values()))
            if now - last_output > cfg.runtime.stall_timeout_s:
                stage = stalled_stage(snap) if "stages" in snap else "unknown"
                raise JobFailed(
                    f"no row reached the output for {cfg.runtime.stall_timeout_s:.0f}s "
                    f"(runtime.stall_timeout_s); the {stage} stage stalled: {json.dumps(snap.get('stages'))}"
                )


def _end_pipeline(ray, monitor) -> None:
    """Kill the failed run's stage actors: Ray Data's own abort can block (a task held by
    backpressure) and would keep their CPUs and GPUs from whoever uses the cluster next."""
    try:
        actors = ray.get(monitor.stage_actors.remote(), timeout=10)
    except Exception as e:  # best effort: the failure being raised is what matters
        log.warning("could not list the pipeline's actors to end them: %s", e)
        return
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor, no_restart=True)


def _let_engines_stop(ray, monitor, timeout_s: float = 30.0) -> None:
    """A finished pipeline's engine actors exit once nothing holds them, shutting their engines
    down on the way; wait (bounded) until they are gone, so that whoever stops Ray next (the
    demo, a RayJob's end) never kills an engine mid-shutdown."""
    try:
        engines = _snapshot(ray, monitor).get("engine_actors", [])
        ray.get(monitor.release_actors.remote(), timeout=10)
        deadline = time.monotonic() + timeout_s
        while (live := [a for a, s in actor_states(engines).items() if s != "DEAD"]) and time.monotonic() < deadline:
            time.sleep(0.2)
    except Exception as e:  # an aid to a clean exit; the run's result stands without it
        log.warning("could not wait for the engines to stop: %s", e)
        return
    if live:
        log.warning("%d engine actor(s) still shutting down after %.0fs; going on", len(live), timeout_s)


def _snapshot(ray, monitor) -> dict[str, Any]:
    try:
        return ray.get(monitor.snapshot.remote(), timeout=10)
    except Exception as e:  # the monitor is an aid; its loss must not hide the real failure
        log.warning("job monitor unavailable: %s", e)
        return {}


def verify(out: OutputDir, plan: Plan, tasks: list[str]) -> tuple[dict[str, int], list[str]]:
    """Status counts over the plan's shards, and the shards whose ledger entry is missing or short."""
    ledger = out.read_ledger([s.id for s in plan.shards])
    counts: Counter = Counter()
    bad = []
    for s in plan.shards:
        entry = ledger.get(s.id)
        per_task = (entry or {}).get("counts", {})
        # An entry may cover more rows than this plan asks of the shard (a run with input.limit).
        # A pair has one row per task, or one per clip (then the entry counts its pairs).
        pairs = (entry or {}).get("pairs") or {t: sum(per_task.get(t, {}).values()) for t in tasks}
        if entry is None or entry["rows"] < s.rows or any(pairs.get(t) != entry["rows"] for t in tasks):
            bad.append(s.id)
            continue
        for t in tasks:
            counts.update(per_task[t])
    return dict(counts), bad


def run_job(cfg: JobConfig, dry_run: bool = False, stages: dict[str, Any] | None = None) -> RunSummary:
    """`stages` replaces stage classes by name (benchmarks swap the engine for a trivial one)."""
    from internvl_batch.job.pipeline import init_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    retry.drain()  # this process's counts from before this run are not this run's
    tasks = [t.name for t in cfg.task]
    out = OutputDir(cfg.output.path, cfg.output.storage_options)
    # Planning and the duplicate check run before the pipeline, when the cluster's CPUs are free.
    local = DRY_RUN_LOCAL_BYTES if dry_run else 0
    plan = make_plan(cfg, out, _ray_mapper(cfg, 1.0), write=not dry_run, local_bytes=local)
    summary = RunSummary(finished=False, run_id=new_run_id(), plan=plan.summary(tasks))
    if dry_run:
        summary.finished = True
        print(plan_text(summary.plan))
        return summary
    log.info("plan: %s", json.dumps(summary.plan))
    if not plan.todo and out.has_success():
        # A finished output stays as it is: its _SUCCESS keeps the run that did the work (the
        # rates `plan --from-run` reads), and no cluster starts for nothing.
        log.info("nothing left to do: every row x task pair is in %s (finished before)", out.url)
        summary.finished = True
        return summary
    ray = init_ray(cfg)
    out.clear_success()
    duplicates, summary.duplicate_ids = _duplicates(ray, cfg, plan, out)
    schema = output_schema(cfg.input.passthrough)
    sink = ShardSink(out, schema, summary.run_id, tasks, plan.todo, cfg.output.rows_per_file,
                     cfg.output.flush_interval_s)  # fmt: skip
    progress = Progress(plan.pairs_todo, cfg.runtime.progress_interval_s, Timeline(out, summary.run_id))
    monitor_name = f"internvl-batch-monitor-{summary.run_id}"
    monitor = start_monitor(ray, monitor_name, cfg.runtime.max_engine_restarts)
    log.info("metrics (Prometheus, ray_internvl_*): %s", " ".join(metrics.endpoints(ray)[:4]) or "no metrics agent")
    try:
        if plan.todo:
            args = _stage_args(cfg, out, summary.run_id, duplicates, monitor_name)
            execute(ray, cfg, plan, sink, progress, {**default_stages(), **(stages or {})}, args, monitor)
            _let_engines_stop(ray, monitor)
    except BaseException:
        _end_pipeline(ray, monitor)
        raise
    finally:
        sink.flush_all()  # what arrived is kept: a rerun resumes from it
        snap = _snapshot(ray, monitor)
        ray.kill(monitor)
        progress.observe(snap)
        progress.close()
    wall = time.monotonic() - progress.start
    ended = time.time()
    summary.started_at, summary.ended_at = _utc(ended - wall), _utc(ended)
    summary.written_this_run = sink.written
    summary.wall_s = round(wall, 2)
    summary.pairs_per_s = round(sink.written / wall, 3) if wall else 0.0
    summary.output_tokens_per_s = round(progress.tokens / wall, 2) if wall else 0.0
    summary.prompt_tokens_per_s = round(progress.prompt_tokens / wall, 2) if wall else 0.0
    summary.tiles_per_s = round(progress.tiles / wall, 2) if wall else 0.0
    summary.resources = {"model": cfg.model.path, "replicas": cfg.runtime.replicas,
                         "gpus_per_replica": cfg.model.tensor_parallel_size if cfg.runtime.use_gpu else 0}  # fmt: skip
    summary.gpu_hours = round(wall * cfg.runtime.replicas * summary.resources["gpus_per_replica"] / 3600, 4)
    summary.stage_ms = {k: round(v, 1) for k, v in progress.stage_ms.items()}
    summary.engine = {**combine(list(snap.get("replicas", {}).values())), "failures": snap.get("engine_failures", 0)}
    summary.status_counts, bad = verify(out, plan, tasks)
    # Storage retries: the workers' (through the monitor) plus the driver's and its tasks'.
    workers, driver = snap.get("counters", {}), retry.drain()
    summary.counters = {k: workers.get(k, 0) + driver.get(k, 0) for k in sorted(workers.keys() | driver.keys())}
    summary.counters["duplicate_results_dropped"] = sink.duplicates_dropped
    if bad or sink.unfinished():
        log.error("output incomplete: %d shard(s) not complete (e.g. %s); rerun to resume", len(bad), bad[:3])
        return summary
    summary.finished = True
    if cfg.output.format == "openai_batch":  # before the marker: _SUCCESS means everything is there
        n = write_responses(out, [s.id for s in plan.shards], set(plan.todo), cfg.model.path)
        log.info("openai_batch: wrote the response file of %d shard(s) under %s/%s", n, out.url, OPENAI_FOLDER)
    report = redacted(asdict(summary))  # holds no config today; must never carry a credential
    try:  # before the marker, which stays the last file written
        log.info("report: %s", write_report(out, report))
    except Exception:  # an aid: the run's output is complete without it
        log.exception("could not write the run report")
    out.write_success(report)
    log.info("finished: %s", json.dumps(report))
    return summary
