"""The job's metrics, read back the way Prometheus reads them: from the local Ray cluster's
metrics endpoint, after tests/observe/conftest.py's real job."""

import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from internvl_batch.observe import metrics
from tests.support.prom import scrape

pytestmark = pytest.mark.slow  # a Ray cluster


def _per_task(table, column: str) -> dict[tuple, float]:
    return {(("task", t),): float(pc.sum(table.filter(pc.equal(table["task"], t))[column]).as_py() or 0)
            for t in ("caption", "qa")}  # fmt: skip


def test_job_metrics_reach_the_ray_metrics_endpoint(observed_job, metrics_port):
    table = pq.read_table(observed_job.out)
    by = table.group_by(["task", "status"]).aggregate([("status", "count")]).to_pylist()
    expected = {
        "ray_internvl_rows_total": {(("status", r["status"]), ("task", r["task"])): r["status_count"] for r in by},
        "ray_internvl_prompt_tokens_total": _per_task(table, "num_prompt_tokens"),
        "ray_internvl_output_tokens_total": _per_task(table, "num_output_tokens"),
        # per manifest copy: square 1, wide 2+1, tall 3+1, big 6+1, rotated (450x900) 2+1,
        # the pair 3+4, square 1; and the extra tall row 3+1
        "ray_internvl_tiles_total": {(): 2 * 26.0 + 4},
        # 9 rows per copy, the extra row, the broken line
        "ray_internvl_stage_rows_total": {(("stage", "read"),): 20.0, (("stage", "prepare"),): 20.0},
        # 10 images per copy and one: 21 fetched, one of each copy missing, one of each corrupt
        "ray_internvl_latency_ms_count": {
            (("step", "fetch"),): 21.0,
            (("step", "decode"),): 19.0,
            (("step", "tile"),): 17.0,
        },  # fmt: skip
        "ray_internvl_retries_total": {(("kind", "fetch"),): 2.0},  # the first GET of each HTTP path
        "ray_internvl_engine_failures_total": {(): 1.0},
    }
    deadline = time.monotonic() + 120  # Ray's agents export every few seconds
    while True:
        got = scrape(metrics_port)
        wrong = {name: {k: (v, got.get(name, {}).get(k)) for k, v in want.items() if got.get(name, {}).get(k) != v}
                 for name, want in expected.items()}  # fmt: skip
        wrong = {k: v for k, v in wrong.items() if v}
        if not wrong and got.get("ray_internvl_engine_queue_depth"):
            break
        assert time.monotonic() < deadline, f"not exported as expected (want, got): {wrong}"
        time.sleep(2)

    summary = observed_job.summary
    assert summary.counters["fetch_retries"] == 2 and summary.engine["failures"] == 1
    assert summary.counters["tiles"] == 2 * 26 + 4
    # Every documented name is exported, under the name README's table gives.
    exported = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in got}
    assert {m.exported for m in metrics.METRICS} <= exported
    gauges = got["ray_internvl_engine_queue_depth"]
    assert set(gauges.values()) == {3.0} and all(labels[0][0] == "replica" for labels in gauges)
    assert set(got["ray_internvl_engine_occupancy"].values()) == {0.75}
    latency = got["ray_internvl_latency_ms_count"]
    assert latency[(("step", "engine"),)] >= table.num_rows  # every output row passed the stand-in engine
    assert got["ray_internvl_latency_ms_bucket"][(("le", "+Inf"), ("step", "fetch"))] == latency[(("step", "fetch"),)]
