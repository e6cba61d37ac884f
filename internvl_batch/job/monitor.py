"""The run's health: a small Ray actor the stages report to, which the driver polls.

Why an actor: the driver sees only the rows that reach the sink. A dead engine, an engine
that cannot start, or a stage that stopped moving shows up only as silence there, and
silence is what hung jobs are made of (ray-project/ray #59986). Stages report progress
per batch and engine starts/deaths as they happen; the driver's control loop turns
"N engine deaths in a row" or "no output for stall_timeout_s" into a failed job that
names the cause and the stage, within seconds.

Reports are fire-and-forget except an engine's death notice, which is awaited briefly:
the process exits right after it.

Not every death is reported: an engine actor SIGKILLed (the OOM killer's way) or crashed
dies before it can say so, and Ray restarts it in place (Ray Data's actors have
max_restarts=-1). So every engine actor reports when it starts, with how many times Ray
has restarted it; a restart no report accounts for is a death too, and counts against
`runtime.max_engine_restarts` like any other, with the likely cause (the node's kernel
OOM-kill count and memory use, which the restarted actor reads on its node).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
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
        # Engine actors by Ray actor id: the restarts seen, deaths reported since, node facts.
        self._restarts: dict[str, int] = {}
        self._reported: Counter[str] = Counter()
        self._node: dict[str, dict[str, Any]] = {}
        self.live: dict[str, str] = {}  # actor id -> replica whose engine started and did not fail
        self.replicas: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = {}
        self.fatal: str | None = None
        self.actors: list[Any] = []

    def join(self, actor: Any) -> None:
        self.actors.append(actor)

    def release_actors(self) -> None:
        """Drop the stage actors' handles: a finished pipeline's actors then exit gracefully
        (Ray Data drops its own) and shut their engines down (InferenceStage.close)."""
        self.actors.clear()

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

    def engine_starting(self, replica: str, actor_id: str, restarts: int, node: dict[str, Any]) -> None:
        """An engine actor's constructor began: count the deaths behind its restarts that no
        report accounts for (SIGKILL, OOM, a crash)."""
        before = self._restarts.get(actor_id, 0)
        unreported = max(0, restarts - before - self._reported.pop(actor_id, 0))
        previous = self._node.get(actor_id, {})
        self._restarts[actor_id], self._node[actor_id] = restarts, node
        self.live.pop(actor_id, None)
        for _ in range(unreported):
            self._count_failure(replica, _unreported_cause(actor_id, previous, node))

    def engine_started(self, replica: str, actor_id: str | None = None) -> None:
        self.engines_started += 1
        if actor_id is not None:
            self.live[actor_id] = replica

    def engine_failed(self, replica: str, cause: str, actor_id: str | None = None) -> None:
        if actor_id is not None:
            self._reported[actor_id] += 1  # its restart is this death, not another
            self.live.pop(actor_id, None)
        self._count_failure(replica, cause)

    def _count_failure(self, replica: str, cause: str) -> None:
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
            "engine_actors": sorted(self.live),
            "replicas": dict(self.replicas),
            "counters": dict(self.counters),
        }


def node_facts() -> dict[str, Any]:
    """What a restarted engine actor can tell about why its last process died: the node's
    kernel OOM-kill count (/proc/vmstat) and memory use, read on the node it runs on."""
    import socket

    import psutil

    facts: dict[str, Any] = {"host": socket.gethostname(), "memory_percent": psutil.virtual_memory().percent}
    try:
        with open("/proc/vmstat") as f:
            facts["oom_kills"] = next((int(line.split()[1]) for line in f if line.startswith("oom_kill ")), None)
    except OSError:  # not Linux, or no /proc: the memory figure alone
        pass
    return facts


def _unreported_cause(actor_id: str, before: dict[str, Any], now: dict[str, Any]) -> str:
    cause = (
        f"the engine actor {actor_id[:12]} died without reporting why and Ray restarted it: its process "
        "was killed (SIGKILL: the OOM killer's way, or a preemption) or crashed"
    )
    kills_then, kills_now = before.get("oom_kills"), now.get("oom_kills")
    same_host = before.get("host") == now.get("host")
    if same_host and kills_then is not None and kills_now is not None and kills_now > kills_then:
        cause += f"; the kernel's OOM killer ran {kills_now - kills_then} time(s) on {now['host']} meanwhile"
    memory = now.get("memory_percent")
    if memory is not None:
        cause += f"; {now.get('host', 'its node')} memory is {memory:.0f}% used now"
    return cause


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

    def engine_starting(self, replica: str) -> str | None:
        """From an engine actor's constructor, first thing: lets the monitor count deaths no
        report told of (see the module's docstring). Returns this actor's id."""
        if not (actor := self._get()):
            return None
        import ray

        ctx = ray.get_runtime_context()
        actor_id = ctx.get_actor_id()
        actor.engine_starting.remote(replica, actor_id, _restarts(actor_id), node_facts())
        return actor_id

    def engine_started(self, replica: str, actor_id: str | None) -> None:
        if actor := self._get():
            actor.engine_started.remote(replica, actor_id)

    def engine_failed(self, replica: str, cause: str, actor_id: str | None = None) -> None:
        self._report("engine_failed", replica, cause, actor_id)

    def stage_failed(self, stage: str, cause: str) -> None:
        """A failure that fails the job: reported before it is raised, because Ray Data's abort
        can block on the other tasks of the stage (a reader held by backpressure) and never
        reach the driver; the driver's poll sees this instead."""
        self._report("stage_failed", stage, cause)

    def _report(self, method: str, *args: str | None) -> None:
        if actor := self._get():
            import ray

            try:
                ray.get(getattr(actor, method).remote(*args), timeout=10)
            except Exception:  # the report is best effort; the raise or exit that follows is not
                log.exception("could not report a failure to the job monitor")


def actor_states(actor_ids: list[str]) -> dict[str, str]:
    """ALIVE / RESTARTING / DEAD ... per actor id, from the GCS's actor table (no dashboard needed)."""
    from ray._private.state import actors

    return {a: str((actors(actor_id=a) or {}).get("State", "DEAD")) for a in actor_ids}


def _restarts(actor_id: str) -> int:
    """How many times Ray has restarted this actor. From the GCS's actor table, the source
    Ray's own `RuntimeContext.was_current_actor_reconstructed` reads (which gives only a bool:
    two kills before the first report must count as two)."""
    from ray._private.state import actors

    info = actors(actor_id=actor_id) or {}
    return int(info.get("NumRestarts", 0))
