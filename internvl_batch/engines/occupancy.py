"""How often the engine had work queued: the figure a GPU feels, measured from the engine's
own scheduler statistics. Engine-neutral: an engine feeds `record(running, waiting)` after
each step (vLLM through its stat logger, engines/vllm/stat_logger.py); the job reads
`stats()` and `combine`s replicas without knowing which engine ran.

A decode step costs about the same for 4 or 64 sequences, so a GPU is used well when
every step runs a full batch, i.e. when the scheduler has requests waiting or runs
`max_num_seqs` of them. vLLM reports (running, waiting) after every step to its stat
loggers; we register one and sample the latest report every
`interval_s` together with our own count of requests in flight: a scheduler with nothing
in flight takes no steps, so its last report would look busy forever, and during one long
step (a prefill with many images) its last report is stale, while more requests in
flight than `max_num_seqs` means some are waiting whatever the report says.

`steady` runs from the first request submitted to the last moment work was still coming
or waiting (a submission, or a sample with requests waiting): after that the queue only
drains, by construction, and the tail says nothing about feeding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Counts:
    samples: int = 0
    saturated: int = 0
    running: int = 0
    waiting: int = 0

    def minus(self, other: _Counts) -> _Counts:
        return _Counts(*(a - b for a, b in zip(vars(self).values(), vars(other).values())))


class Occupancy:
    def __init__(self, max_num_seqs: int):
        self.max_num_seqs = max_num_seqs
        self.running = 0
        self.waiting = 0
        self.in_flight = 0
        self.steps = 0
        self._total = _Counts()
        self._at_first: _Counts | None = None
        self._at_last = _Counts()
        self.first_submit: float | None = None
        self.last_submit: float | None = None
        self.last_finish: float | None = None

    # -- fed by vLLM (one report per engine step) and by the engine wrapper ------------
    def record(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting
        self.steps += 1

    def submitted(self) -> None:
        self.in_flight += 1
        self.last_submit = time.monotonic()
        if self._at_first is None:
            self.first_submit = self.last_submit
            self._at_first = _Counts(**vars(self._total))
        self._at_last = _Counts(**vars(self._total))

    def finished(self) -> None:
        self.in_flight -= 1
        self.last_finish = time.monotonic()

    def sample(self) -> None:
        t = self._total
        t.samples += 1
        if self.in_flight:
            t.running += self.running
            t.waiting += self.waiting
            queued = self.waiting > 0 or self.in_flight > self.max_num_seqs
            if queued or self.running >= self.max_num_seqs:
                t.saturated += 1
            if queued and self._at_first is not None:
                self._at_last = _Counts(**vars(t))

    # -- read ------------------------------------------------------------------------
    def stats(self) -> dict[str, float | int]:
        steady = self._at_last.minus(self._at_first or self._at_last)
        return {
            "steady_samples": steady.samples,
            "steady_saturated": steady.saturated,
            "occupancy": round(steady.saturated / steady.samples, 4) if steady.samples else 0.0,
            "mean_running": round(steady.running / steady.samples, 2) if steady.samples else 0.0,
            "mean_waiting": round(steady.waiting / steady.samples, 2) if steady.samples else 0.0,
            "in_flight": self.in_flight,
            "steps": self.steps,
            # CLOCK_MONOTONIC is one clock for every process of a Linux host.
            "first_submit": self.first_submit,
            "last_finish": self.last_finish,
        }


def combine(replicas: list[dict]) -> dict[str, float | int]:
    """One figure for the run: replicas weighted by their steady-state samples."""
    samples = sum(r.get("steady_samples", 0) for r in replicas)
    saturated = sum(r.get("steady_saturated", 0) for r in replicas)
    firsts = [r["first_submit"] for r in replicas if r.get("first_submit") is not None]
    lasts = [r["last_finish"] for r in replicas if r.get("last_finish") is not None]
    return {
        "occupancy": round(saturated / samples, 4) if samples else 0.0,
        "replicas": len(replicas),
        "steady_samples": samples,
        # From the first request any replica took to the last result: the engines' busy span.
        "busy_s": round(max(lasts) - min(firsts), 3) if firsts and lasts else 0.0,
    }
