"""The job's metrics, through Ray's metrics API: each process records its own, Ray's
per-node metrics agent aggregates them and serves them to Prometheus (and the Ray
dashboard) as `ray_<name>` (counters also get `_total`, histograms `_bucket`, `_count`,
`_sum`). `METRICS` is the documented list; README's table and the test read the same names.

Where each is recorded: the driver counts output rows and tokens from Arrow aggregates of
each result batch (the one place rows are final), mirrors the monitor's retry and engine
failure counters, and the stages record what only they see (per-step latencies, tiles,
engine occupancy). Recording is per batch except the latency histograms, which take one
`observe` per row and step (about 1 us each: noise next to a fetch or a tile).

Outside a Ray worker (unit tests, `validate`) Ray's metric objects record into nothing,
so the stages need no switch.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

PREFIX = "internvl_"
# Milliseconds: a local tile is ~1-20 ms, an engine request seconds to minutes.
LATENCY_MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000]
STEPS = ("fetch", "decode", "tile", "engine")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as recorded; Prometheus shows `ray_<name>` (+ `_total` for a counter)
    kind: str  # counter | gauge | histogram
    tags: tuple[str, ...]
    description: str

    @property
    def exported(self) -> str:
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


METRICS = (
    MetricSpec(f"{PREFIX}rows", "counter", ("task", "status"), "output rows (row x task) by status"),
    MetricSpec(f"{PREFIX}prompt_tokens", "counter", ("task",), "prompt tokens of output rows"),
    MetricSpec(f"{PREFIX}output_tokens", "counter", ("task",), "generated tokens of output rows"),
    MetricSpec(f"{PREFIX}tiles", "counter", (), "448px tiles made from images and video frames"),
    MetricSpec(
        f"{PREFIX}stage_rows",
        "counter",
        ("stage",),
        "rows each stage finished (read, prepare: manifest rows; inference: row x task)",
    ),
    MetricSpec(
        f"{PREFIX}latency_ms",
        "histogram",
        ("step",),
        "per-row latency of fetch, decode, tile (per image or video) and engine (per request, submit to result)",
    ),
    MetricSpec(
        f"{PREFIX}retries", "counter", ("kind",), "retried attempts: fetch (media), storage (manifest and output I/O)"
    ),
    MetricSpec(f"{PREFIX}engine_failures", "counter", (), "engine replicas that died or failed to start"),
    MetricSpec(
        f"{PREFIX}engine_occupancy",
        "gauge",
        ("replica",),
        "share of samples in which the replica's scheduler had a full batch or a queue (steady state)",
    ),
    MetricSpec(f"{PREFIX}engine_queue_depth", "gauge", ("replica",), "requests waiting in the replica's scheduler"),
    MetricSpec(f"{PREFIX}engine_running", "gauge", ("replica",), "requests the replica's scheduler runs"),
    MetricSpec(f"{PREFIX}engine_in_flight", "gauge", ("replica",), "requests handed to the replica, not finished"),
)
SPECS = {m.name: m for m in METRICS}


@functools.cache
def _metric(name: str) -> Any:
    """One Ray metric object per name and process, made on first use (after Ray connects)."""
    from ray.util import metrics

    spec = SPECS[name]
    if spec.kind == "counter":
        return metrics.Counter(spec.name, spec.description, tag_keys=spec.tags)
    if spec.kind == "gauge":
        return metrics.Gauge(spec.name, spec.description, tag_keys=spec.tags)
    return metrics.Histogram(spec.name, spec.description, boundaries=LATENCY_MS_BOUNDARIES, tag_keys=spec.tags)


def _inc(name: str, value: float, **tags: str) -> None:
    if value > 0:  # Ray refuses a zero increment
        _metric(PREFIX + name).inc(float(value), tags=tags or None)


# -- the driver ----------------------------------------------------------------------------


def record_output(batch: pa.Table) -> None:
    """Rows by task and status, tokens by task, from one result batch: two Arrow group-bys."""
    if batch.num_rows == 0:
        return
    for r in batch.group_by(["task", "status"]).aggregate([("status", "count")]).to_pylist():
        _inc("rows", r["status_count"], task=r["task"], status=r["status"])
    sums = batch.group_by("task").aggregate([("num_prompt_tokens", "sum"), ("num_output_tokens", "sum")])
    for r in sums.to_pylist():
        _inc("prompt_tokens", r["num_prompt_tokens_sum"] or 0, task=r["task"])
        _inc("output_tokens", r["num_output_tokens_sum"] or 0, task=r["task"])


class CounterMirror:
    """Turns the job monitor's cumulative counters into metric increments (driver side):
    `<kind>_retries` -> retries{kind}, engine failures -> engine_failures."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = defaultdict(int)

    def update(self, counters: dict[str, int], engine_failures: int) -> None:
        current = {k: v for k, v in counters.items() if k.endswith("_retries")}
        current["engine_failures"] = engine_failures
        for key, value in current.items():
            delta, self._seen[key] = value - self._seen[key], value
            if key == "engine_failures":
                _inc("engine_failures", delta)
            else:
                _inc("retries", delta, kind=key.removesuffix("_retries"))


# -- the stages ----------------------------------------------------------------------------


def stage_rows(stage: str, n: int) -> None:
    _inc("stage_rows", n, stage=stage)


def tiles(n: int) -> None:
    _inc("tiles", n)


def observe_ms(step: str, values: Iterable[float]) -> None:
    hist = _metric(PREFIX + "latency_ms")
    tags = {"step": step}
    for v in values:
        hist.observe(float(v), tags=tags)


def engine_state(replica: str, stats: dict[str, Any], running: int, waiting: int) -> None:
    """A replica's gauges, set after each batch (`stats`: engines/occupancy.Occupancy.stats())."""
    tags = {"replica": replica}
    _metric(PREFIX + "engine_occupancy").set(float(stats.get("occupancy", 0.0)), tags=tags)
    _metric(PREFIX + "engine_in_flight").set(float(stats.get("in_flight", 0)), tags=tags)
    _metric(PREFIX + "engine_running").set(float(running), tags=tags)
    _metric(PREFIX + "engine_queue_depth").set(float(waiting), tags=tags)


class StepTimer:
    """Per-row step timings, held for one batch and then observed at once."""

    def __init__(self) -> None:
        self._ms: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:  # a failed fetch took time too
            self._ms[step].append((time.perf_counter() - start) * 1000)

    def add(self, step: str, ms: float) -> None:
        """A step timed elsewhere (a fetch, in a fetch thread)."""
        self._ms[step].append(ms)

    def flush(self) -> None:
        for step, values in self._ms.items():
            observe_ms(step, values)
        self._ms.clear()


def endpoints(ray: Any) -> list[str]:
    """Each live node's Prometheus endpoint (its metrics agent), as Prometheus' service
    discovery of the cluster lists them."""
    try:
        nodes = ray.nodes()
    except Exception:  # an aid for the log line only
        return []
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in nodes if n.get("alive") and n.get("MetricsExportPort")]  # fmt: skip
