"""The run's health: a small Ray actor the stages report to, which the driver polls.

Why an actor: the driver sees only the rows that reach the sink. A dead engine, an engine
that cannot start, or a stage that stopped moving shows up only as silence there, and
silence is what hung jobs are made of (ray-project/ray #59986). Stages report progress
per batch and engine starts/deaths as they happen; the driver's control loop turns
"N engine deaths in a row" or "no output for stall_timeout_s" into a failed job that
names the cause and the stage, within seconds.

Reports are fire-and-forget except an engine's death notice, which is awaited briefly:
the process exits right after it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("internvl_batch")

STAGES = ("read", "prepare", "inference")


class JobFailed(RuntimeError):
    """The job cannot finish as things are (the message names why); its output stays resumable."""


@dataclass
class _Stage:
    rows: int = 0
    last: float = field(default_factory=time.monotonic)


class JobMonitor:
    """Runs as a Ray actor (see `start_monitor`); plain methods, so it is testable as is."""

    def __init__(self, max_engine_restarts: int):
        self.max_engine_restarts = max_engine_restarts
        self.start = time.monotonic()
        self.stages = {s: _Stage(last=self.start) for s in STAGES}
        self.engine_failures = 0
        self.consecutive_failures = 0
        self.last_failure: str | None = None
        self.engines_started = 0
        self.replicas: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = {}
        self.fatal: str | None = None
        self.actors: list[Any] = []

    def join(self, actor: Any) -> None:
        self.actors.append(actor)

    def stage_actors(self) -> list[Any]:
        """The handles of every stage actor that joined: the runner kills them when the job fails."""
        return list(self.actors)

    def progress(self, stage: str, rows: int) -> None:
        st = self.stages[stage]
        st.rows += rows
        st.last = time.monotonic()

    def batch_done(self, replica: str, rows: int, stats: dict[str, Any] | None = None) -> None:
        self.progress("inference", rows)
        self.consecutive_failures = 0
        if stats is not None:
            self.replicas[replica] = stats

    def count(self, counters: dict[str, int]) -> None:
        for k, v in counters.items():
            self.counters[k] = self.counters.get(k, 0) + v

    def engine_started(self, replica: str) -> None:
        self.engines_started += 1

    def engine_failed(self, replica: str, cause: str) -> None:
        self.engine_failures += 1
        self.consecutive_failures += 1
        self.last_failure = cause
        log.error("engine replica %s failed (%d in a row): %s", replica, self.consecutive_failures, cause)
        if self.consecutive_failures > self.max_engine_restarts:
            self.fatal = (
                f"the engine failed {self.consecutive_failures} times in a row "
                f"(runtime.max_engine_restarts={self.max_engine_restarts}); last: {cause}"
            )

    def stage_failed(self, stage: str, cause: str) -> None:
        log.error("the %s stage failed: %s", stage, cause)
        if self.fatal is None:
            self.fatal = f"the {stage} stage failed: {cause}"

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "fatal": self.fatal,
            "stages": {s: {"rows": st.rows, "idle_s": round(now - st.last, 1)} for s, st in self.stages.items()},
            "engine_failures": self.engine_failures,
            "last_engine_failure": self.last_failure,
            "engines_started": self.engines_started,
            "replicas": dict(self.replicas),
            "counters": dict(self.counters),
        }


def stalled_stage(snapshot: dict[str, Any]) -> str:
    """The stage that stopped first: the one idle the longest (upstream on a tie), since the
    stages behind a stuck one stop soon after it, and those before it fill up and stop later."""
    stages = snapshot["stages"]
    return max(STAGES, key=lambda s: (stages[s]["idle_s"], -STAGES.index(s)))


def start_monitor(ray: Any, name: str, max_engine_restarts: int):
    # Zero CPUs: it must never wait for a slot on a busy cluster.
    return ray.remote(JobMonitor).options(name=name, num_cpus=0, max_concurrency=4).remote(max_engine_restarts)


class MonitorClient:
    """What a stage holds: a handle looked up by name (none outside a job run), fire-and-forget."""

    def __init__(self, name: str | None):
        self._name, self._actor = name, None

    def _get(self):
        if self._name and self._actor is None:
            import ray

            self._actor = ray.get_actor(self._name)
        return self._actor

    def join(self) -> None:
        """From a stage actor's constructor: the job can then end this actor on failure."""
        if actor := self._get():
            import ray

            actor.join.remote(ray.get_runtime_context().current_actor)

    def progress(self, stage: str, rows: int) -> None:
        if actor := self._get():
            actor.progress.remote(stage, rows)

    def batch_done(self, replica: str, rows: int, stats: dict[str, Any] | None = None) -> None:
        if actor := self._get():
            actor.batch_done.remote(replica, rows, stats)

    def count(self, counters: dict[str, int]) -> None:
        if (actor := self._get()) and counters:
            actor.count.remote(counters)

    def engine_started(self, replica: str) -> None:
        if actor := self._get():
            actor.engine_started.remote(replica)

    def engine_failed(self, replica: str, cause: str) -> None:
        self._report("engine_failed", replica, cause)

    def stage_failed(self, stage: str, cause: str) -> None:
        """A failure that fails the job: reported before it is raised, because Ray Data's abort
        can block on the other tasks of the stage (a reader held by backpressure) and never
        reach the driver; the driver's poll sees this instead."""
        self._report("stage_failed", stage, cause)

    def _report(self, method: str, *args: str) -> None:
        if actor := self._get():
            import ray

            try:
                ray.get(getattr(actor, method).remote(*args), timeout=10)
            except Exception:  # the report is best effort; the raise or exit that follows is not
                log.exception("could not report a failure to the job monitor")
