"""JobMonitor as a plain object (it runs as a Ray actor in a job), stalled_stage, and the
stages' MonitorClient outside a job."""

from __future__ import annotations

import pytest

from internvl_batch.job import monitor as monitor_module
from internvl_batch.job.monitor import STAGES, JobMonitor, MonitorClient, stalled_stage


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(monitor_module, "time", c)
    return c


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
def test_fatal_after_max_restarts_plus_one_failures_in_a_row(max_restarts):
    m = JobMonitor(max_restarts)
    for i in range(max_restarts):
        m.engine_failed(f"r{i}", f"boom {i}")
        assert m.snapshot()["fatal"] is None
    m.engine_failed("r9", "the last straw")
    fatal = m.snapshot()["fatal"]
    assert f"{max_restarts + 1} times in a row" in fatal and "the last straw" in fatal
    assert f"max_engine_restarts={max_restarts}" in fatal


def test_a_finished_batch_resets_the_run_of_failures():
    m = JobMonitor(2)
    for _ in range(3):  # 2 failures, a batch, 2 failures...: never 3 in a row
        m.engine_failed("r0", "boom")
        m.engine_failed("r1", "boom")
        m.batch_done("r2", 8)
    snap = m.snapshot()
    assert snap["fatal"] is None and snap["engine_failures"] == 6 and snap["last_engine_failure"] == "boom"
    m.engine_failed("r0", "a")
    m.engine_failed("r0", "b")
    assert m.snapshot()["fatal"] is None
    m.engine_failed("r0", "c")
    assert "3 times in a row" in m.snapshot()["fatal"]
    m.batch_done("r2", 1)
    assert m.snapshot()["fatal"] is not None  # a fatal verdict sticks


def test_restarts_no_report_accounts_for_are_deaths_too():
    """A SIGKILLed actor can't report; Ray restarts it and the new process says how many
    restarts it has behind it. Reported deaths are not counted twice."""
    m = JobMonitor(2)
    node = {"host": "n1", "memory_percent": 40.0, "oom_kills": 7}
    m.engine_starting("100", "actor-a", 0, node)
    m.engine_started("100", "actor-a")
    assert m.snapshot()["engine_failures"] == 0 and m.snapshot()["engine_actors"] == ["actor-a"]
    m.engine_failed("100", "vLLM engine failed: EngineDeadError", "actor-a")  # reported, then exits
    m.engine_starting("101", "actor-a", 1, node)  # its restart: the death above, not another
    assert m.snapshot()["engine_failures"] == 1
    # Killed twice before it could report (the second time during its restart): two deaths.
    m.engine_starting("103", "actor-a", 3, {**node, "oom_kills": 9, "memory_percent": 97.0})
    snap = m.snapshot()
    assert snap["engine_failures"] == 3 and snap["engine_actors"] == []
    assert "3 times in a row (runtime.max_engine_restarts=2)" in snap["fatal"]
    assert "died without reporting why" in snap["fatal"]
    assert "OOM killer ran 2 time(s) on n1" in snap["fatal"] and "memory is 97% used" in snap["fatal"]


def test_an_unreported_death_on_another_node_does_not_blame_this_nodes_oom_kills():
    m = JobMonitor(0)
    m.engine_starting("1", "a", 0, {"host": "n1", "oom_kills": 1, "memory_percent": 50.0})
    m.engine_starting("2", "a", 1, {"host": "n2", "oom_kills": 5, "memory_percent": 50.0})
    fatal = m.snapshot()["fatal"]
    assert "died without reporting why" in fatal and "OOM killer ran" not in fatal


def test_snapshot(clock):
    m = JobMonitor(3)
    clock.now += 5
    m.progress("read", 10)
    m.progress("read", 5)
    m.progress("prepare", 7)
    clock.now += 2
    m.batch_done("replica-a", 4, {"waiting": 1})
    m.batch_done("replica-b", 3)  # no stats: keeps none for it
    m.engine_started("replica-a")
    m.engine_started("replica-b")
    m.count({"fetch_retries": 2, "redirects": 1})
    m.count({"fetch_retries": 3})
    clock.now += 1.3
    snap = m.snapshot()
    assert snap == {
        "fatal": None,
        "stages": {
            "read": {"rows": 15, "idle_s": 3.3},
            "prepare": {"rows": 7, "idle_s": 3.3},
            "inference": {"rows": 7, "idle_s": 1.3},
        },
        "engine_failures": 0,
        "last_engine_failure": None,
        "engines_started": 2,
        "engine_actors": [],
        "replicas": {"replica-a": {"waiting": 1}},
        "counters": {"fetch_retries": 5, "redirects": 1},
    }
    snap["counters"]["x"] = 1
    snap["replicas"]["y"] = {}
    assert "x" not in m.snapshot()["counters"] and "y" not in m.snapshot()["replicas"]  # copies


def test_idle_time_starts_with_the_monitor(clock):
    m = JobMonitor(3)
    clock.now += 30
    assert {s: v["idle_s"] for s, v in m.snapshot()["stages"].items()} == {s: 30.0 for s in STAGES}


def idle(read: float, prepare: float, inference: float) -> dict:
    return {"stages": {"read": {"idle_s": read}, "prepare": {"idle_s": prepare}, "inference": {"idle_s": inference}}}


@pytest.mark.parametrize(
    "snapshot, stage",
    [
        (idle(1, 2, 300), "inference"),
        (idle(1, 300, 2), "prepare"),
        (idle(300, 2, 1), "read"),
        (idle(5, 300, 300), "prepare"),  # a tie: the upstream one stopped first
        (idle(300, 300, 300), "read"),
        (idle(0, 0, 0), "read"),
    ],
)
def test_stalled_stage(snapshot, stage):
    assert stalled_stage(snapshot) == stage


def test_stalled_stage_of_a_real_snapshot(clock):
    m = JobMonitor(3)
    clock.now += 100
    m.progress("read", 1)
    m.batch_done("r", 1)
    clock.now += 50
    assert stalled_stage(m.snapshot()) == "prepare"


def test_client_outside_a_job_does_nothing():
    c = MonitorClient(None)
    c.progress("read", 3)
    c.batch_done("r", 1, {"a": 1})
    c.count({"x": 1})
    assert c.engine_starting("r") is None  # no actor id outside a job
    c.engine_started("r", None)
    c.engine_failed("r", "boom")  # no actor, no Ray: silently nothing


def test_a_stage_failure_is_fatal_at_once_and_the_first_cause_is_kept():
    m = JobMonitor(3)
    m.stage_failed("read", "PermissionError: Access Denied")
    m.stage_failed("read", "a later echo of the abort")
    assert m.snapshot()["fatal"] == "the read stage failed: PermissionError: Access Denied"
