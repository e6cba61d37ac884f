"""The driver's view of a run while it goes: a live bar on a terminal, one compact line per
`runtime.progress_interval_s` elsewhere (KubeRay's driver log), and a small time series
under `_state/timeline/` that `observe/report.py` plots, also for a run still going.

O(1) in rows: each result batch adds Arrow aggregates to a few counters; the stage
counts, tiles and retries come from the job monitor's snapshot, which the control loop
polls anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter, deque
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from internvl_batch.observe import metrics
from internvl_batch.observe.timeline import Timeline
from internvl_batch.storage import retry

log = logging.getLogger("internvl_batch")

# `bar`, `log`; default: a bar when stderr is a terminal.
MODE_ENV = "INTERNVL_BATCH_PROGRESS"
_RATE_WINDOW_S = 120.0  # the ETA follows the recent rate, not the engine's start-up


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _terminal_columns() -> int:
    """stderr's width when it is a terminal; 0 otherwise, and for a terminal without a size
    (some tools' pseudo-terminals), where a bar would draw nothing."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
    except (OSError, ValueError):
        return 0


def _sum(column: pa.ChunkedArray) -> float:
    return pc.sum(column).as_py() or 0


class Progress:
    def __init__(self, total: int, interval_s: float, timeline: Timeline | None = None, mode: str | None = None):
        self.total, self.interval_s, self.timeline = total, interval_s, timeline
        self.start = self.last = self._last_sample = time.monotonic()
        self.sample_s = min(max(interval_s, 1.0), 60.0)
        self.rows = self.tokens = self.prompt_tokens = 0
        self.counts: Counter = Counter()
        self.stage_ms: Counter = Counter()
        self.snapshot: dict[str, Any] = {}
        self._mirror = metrics.CounterMirror()
        self._recent: deque[tuple[float, int]] = deque([(self.start, 0)])
        self._open_shards = 0
        self._stack = ExitStack()
        self.bar = None
        mode = mode or os.environ.get(MODE_ENV) or ("bar" if _terminal_columns() else "log")
        if mode == "bar":
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total, unit="row", desc="rows x tasks", dynamic_ncols=True, smoothing=0.05,
                            mininterval=0.5)  # fmt: skip
            # Log lines (the driver's and Ray's) go above the bar instead of through it.
            self._stack.enter_context(logging_redirect_tqdm())

    # -- fed by the control loop ---------------------------------------------------------
    def update(self, batch: pa.Table) -> None:
        # Row x task pairs, as the plan counts them: a video's clips are one pair per task.
        pairs = batch.num_rows - int(pc.sum(pc.greater(batch["clip"], 0)).as_py() or 0)
        self.rows += pairs
        for r in pc.value_counts(batch["status"]).to_pylist():
            self.counts[r["values"]] += r["counts"]
        self.tokens += _sum(batch["num_output_tokens"])
        self.prompt_tokens += _sum(batch["num_prompt_tokens"])
        self.stage_ms["preprocess"] += _sum(batch["preprocess_ms"])
        self.stage_ms["engine"] += _sum(batch["engine_ms"])
        metrics.record_output(batch)
        if self.bar is not None:
            self.bar.update(pairs)

    def observe(self, snapshot: dict[str, Any]) -> None:
        """The job monitor's latest snapshot (stage rows, counters, engine failures)."""
        if snapshot:
            self.snapshot = snapshot
        # The workers' counters (through the monitor) and the driver's own storage retries.
        counters = Counter(self.snapshot.get("counters", {})) + Counter(retry.counts())
        self._mirror.update(counters, self.snapshot.get("engine_failures", 0))

    def maybe_log(self, open_shards: int) -> None:
        now = time.monotonic()
        self._open_shards = open_shards
        self._recent.append((now, self.rows))
        while len(self._recent) > 2 and now - self._recent[0][0] > _RATE_WINDOW_S:
            self._recent.popleft()
        if now - self._last_sample >= self.sample_s:
            self._last_sample = now
            self._sample(now)
        if now - self.last >= self.interval_s or (self.bar is not None and now - self.last >= 1.0):
            self.last = now
            self._show(now)

    def close(self) -> None:
        """The last sample and the timeline's last chunk; the bar ends at its final count."""
        now = time.monotonic()
        self._sample(now)
        if self.timeline is not None:
            self.timeline.flush()
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(now), refresh=False)
            self.bar.close()
        else:
            self._show(now)
        self._stack.close()

    # -- figures -------------------------------------------------------------------------
    @property
    def tiles(self) -> int:
        return int(self.snapshot.get("counters", {}).get("tiles", 0))

    def rate(self, now: float) -> float:
        """Rows per second over the last couple of minutes."""
        t0, r0 = self._recent[0]
        return (self.rows - r0) / (now - t0) if now > t0 else 0.0

    def eta_s(self, now: float) -> float | None:
        rate = self.rate(now)
        return (self.total - self.rows) / rate if rate > 0 else None

    def _postfix(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        status = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"{status or 'no rows yet'} | {self.tiles / elapsed:.1f} tiles/s | {self.tokens / elapsed:.1f} out tok/s"

    def _show(self, now: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(now))
            return
        stages = self.snapshot.get("stages", {})
        pct = f" ({100 * self.rows / self.total:.1f}%)" if self.total else ""
        log.info(
            "progress: %d/%d rows x tasks%s, %.2f rows/s, ETA %s, %s, %d shard(s) open%s",
            self.rows, self.total, pct, self.rate(now), _duration(self.eta_s(now)), self._postfix(now),
            self._open_shards, (" | stages " + " ".join(f"{k}={v['rows']}" for k, v in stages.items())) if stages else "",
        )  # fmt: skip

    def _sample(self, now: float) -> None:
        if self.timeline is None:
            return
        snap = self.snapshot
        self.timeline.add({
            "t": round(now - self.start, 2), "time": round(time.time(), 2), "rows": self.rows,
            "output_tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "tiles": self.tiles,
            "stages": {k: v["rows"] for k, v in snap.get("stages", {}).items()},
            "status": dict(self.counts), "engine_failures": snap.get("engine_failures", 0),
        })  # fmt: skip
