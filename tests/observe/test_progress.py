"""The driver's progress: the compact log line, the terminal bar, the timeline it writes and
the metric increments it derives, on synthetic result batches and a controlled clock."""

import logging
from types import SimpleNamespace

import pyarrow as pa
import pytest

from internvl_batch.job.output import OutputDir
from internvl_batch.observe import metrics
from internvl_batch.observe import progress as progress_module
from internvl_batch.observe.progress import Progress
from internvl_batch.observe.timeline import Timeline, read_timeline
from internvl_batch.records import output_schema
from internvl_batch.storage import retry


def _batch(n: int, status: str = "ok", task: str = "caption", tokens: int = 5) -> pa.Table:
    rows = [{"id": f"{status}{i}", "task": task, "status": status, "num_prompt_tokens": 100,
             "num_output_tokens": tokens if status == "ok" else None, "num_tiles": 2, "preprocess_ms": 1.5,
             "engine_ms": 10.0 if status == "ok" else None, "shard": "s", "row": i} for i in range(n)]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=output_schema())


@pytest.fixture
def clock(monkeypatch):
    now = SimpleNamespace(t=1000.0)
    fake = SimpleNamespace(monotonic=lambda: now.t, time=lambda: 1.7e9 + now.t)
    monkeypatch.setattr(progress_module, "time", fake)
    return now


@pytest.fixture
def incs(monkeypatch):
    """Metric increments (name, value, tags) instead of Ray's metric objects."""
    retry.drain()  # the driver's own retries count too: none from other tests
    seen = []
    monkeypatch.setattr(
        metrics, "_inc", lambda name, value, **tags: seen.append((name, value, tags)) if value else None
    )
    return seen


def test_log_line_has_rate_eta_status_tiles_and_tokens(clock, incs, caplog):
    p = Progress(total=100, interval_s=10, mode="log")
    clock.t += 10
    p.update(_batch(30))
    p.update(_batch(10, "fetch_error"))
    p.observe({"stages": {"read": {"rows": 50}, "prepare": {"rows": 45}, "inference": {"rows": 40}},
               "counters": {"tiles": 80}})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="internvl_batch"):
        p.maybe_log(open_shards=3)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    # 40 rows in 10 s: 4/s, 60 to go: 15 s; 80 tiles and 150 output tokens in 10 s.
    assert line.startswith("progress: 40/100 rows x tasks (40.0%), 4.00 rows/s, ETA 0m15s, ")
    assert "fetch_error=10 ok=30 | 8.0 tiles/s | 15.0 out tok/s, 3 shard(s) open" in line
    assert line.endswith("| stages read=50 prepare=45 inference=40")
    caplog.clear()
    clock.t += 5  # within the interval: no line
    with caplog.at_level(logging.INFO, logger="internvl_batch"):
        p.maybe_log(open_shards=3)
    assert not [r for r in caplog.records if r.getMessage().startswith("progress:")]


def test_eta_follows_the_recent_rate_not_the_start_up(clock, incs):
    p = Progress(total=1000, interval_s=10, mode="log")
    clock.t += 600  # ten minutes of engine start-up, nothing done
    p.maybe_log(0)
    for _ in range(10):  # then 10 rows/s
        clock.t += 10
        p.update(_batch(100))
        p.maybe_log(0)
    assert p.rate(clock.t) == pytest.approx(10.0)
    assert p.eta_s(clock.t) == pytest.approx(0.0)
    assert p.rows == 1000


def test_bar_on_a_terminal(clock, incs, capsys):
    p = Progress(total=200, interval_s=10, mode="bar")
    clock.t += 2
    p.update(_batch(50))
    p.observe({"counters": {"tiles": 100}})
    p.maybe_log(open_shards=1)
    p.close()
    err = capsys.readouterr().err
    assert "rows x tasks" in err and "50/200" in err
    assert "ok=50 | 50.0 tiles/s | 125.0 out tok/s" in err


def test_timeline_samples_reach_the_output(clock, incs, tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    p = Progress(total=60, interval_s=2, timeline=Timeline(out, "run-a", flush_s=1e9), mode="log")
    for k in range(3):
        clock.t += 2
        p.update(_batch(20, task="qa"))
        p.observe({"stages": {"read": {"rows": 10 * (k + 1)}}, "counters": {"tiles": 7 * (k + 1)}})
        p.maybe_log(0)
    assert read_timeline(out) == {}  # nothing flushed yet: one chunk a minute
    p.close()
    samples = read_timeline(out)["run-a"]
    assert [s["rows"] for s in samples] == [20, 40, 60, 60]  # each interval, then the close
    assert [s["t"] for s in samples] == [2, 4, 6, 6]
    assert samples[-1]["stages"] == {"read": 30} and samples[-1]["tiles"] == 21
    assert samples[-1]["status"] == {"ok": 60} and samples[-1]["output_tokens"] == 300


def test_metrics_from_batches_and_monitor_counters(clock, incs):
    p = Progress(total=10, interval_s=10, mode="log")
    p.update(pa.concat_tables([_batch(3), _batch(2, "fetch_error"), _batch(4, task="qa", tokens=2)]))
    assert sorted(i for i in incs if i[0] == "rows") == [
        ("rows", 2, {"task": "caption", "status": "fetch_error"}),
        ("rows", 3, {"task": "caption", "status": "ok"}),
        ("rows", 4, {"task": "qa", "status": "ok"}),
    ]
    assert ("output_tokens", 15, {"task": "caption"}) in incs and ("output_tokens", 8, {"task": "qa"}) in incs
    assert ("prompt_tokens", 500, {"task": "caption"}) in incs
    incs.clear()
    p.observe({"counters": {"fetch_retries": 2, "storage_retries": 1, "fetch_fetches": 9}, "engine_failures": 1})
    p.observe({"counters": {"fetch_retries": 5, "storage_retries": 1, "fetch_fetches": 20}, "engine_failures": 1})
    # cumulative counters become increments; only retries and engine failures are mirrored
    assert incs == [
        ("retries", 2, {"kind": "fetch"}), ("retries", 1, {"kind": "storage"}), ("engine_failures", 1, {}),
        ("retries", 3, {"kind": "fetch"}),
    ]  # fmt: skip
