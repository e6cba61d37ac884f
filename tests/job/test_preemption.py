"""Spot / preemptible nodes (issue #21): the job's CLI on a multi-raylet Ray cluster loses the node of
its engine replica mid-run, then a CPU-only node holding its readers' and CPU workers' objects, and
still writes every (id, task) exactly once, on the nodes that are left or replace them, in one run.

The cluster is `ray.cluster_utils.Cluster` on this machine: a head that runs only the driver
(0 CPUs, as on KubeRay), a "GPU" node (1 fake GPU: Ray schedules by resource counts, and the
engine is the stand-in of tests/support/stages.py, which needs no GPU, reporting its node via
tests/support/preemption.py; the real engine's own restart is tested in tests/job/stages/) and
a CPU-only node with the readers and CPU workers, whose output blocks wait in its object store
for the (slower) engine.
Preemption is `remove_node(..., allow_graceful=False)`: the raylet and its workers are killed
at once, as when a spot VM is reclaimed; the autoscaler's replacement is `add_node`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.preemption import engine_nodes

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ROWS, TASKS = 96, ("caption", "detail")
# Failure detection in seconds, not Ray's default 30 s (health checks of the raylets).
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _node_resources(kind: str) -> dict:
    # GPU node: the engine (1 GPU + engine_cpus) and nothing else; CPU node: readers + CPU workers.
    return {"gpu": {"num_cpus": 1, "num_gpus": 1}, "cpu": {"num_cpus": 2, "num_gpus": 0}}[kind] | {
        "object_store_memory": 80 * 2**20
    }


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    from ray.cluster_utils import Cluster

    # Seen by every raylet this test starts, hence by the stand-in engine actors (seconds per batch).
    monkeypatch.setenv("INTERNVL_TEST_DELAY_S", "1.0")
    monkeypatch.setenv("INTERNVL_TEST_NODE_DIR", str(tmp_path / "engines"))
    (tmp_path / "engines").mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20, "_system_config": FAST_FAILURE},
    )
    yield c
    c.shutdown()


def _job(tmp_path: Path, address: str) -> Path:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"r{i:03d}", "image": f"s3://b/{i}.jpg"}) + "\n" for i in range(ROWS))
    )
    job = {
        "input": {"path": str(manifest), "shard_rows": 16},
        "model": {"path": "unused-model"},
        "preprocess": {"max_num": 1},
        "task": [{"name": "caption", "preset": "short_caption"}, {"name": "detail", "preset": "detailed_caption"}],
        "runtime": {"ray_address": address, "use_gpu": True, "replicas": 1, "engine_cpus": 1, "cpu_workers": 2,
                    "cpus_per_worker": 0.5, "readers": 1, "advanced": {"reader_cpus": 0.5}, "preprocess_batch_size": 4,
                    "engine_batch_size": 4, "engine_batches_in_flight": 1, "progress_interval_s": 2, "stall_timeout_s": 120},
        "output": {"path": str(tmp_path / "out"), "rows_per_file": 8, "flush_interval_s": 1},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _ledger(out: Path) -> int:
    return len(list((out / "_ledger").glob("*.json"))) if (out / "_ledger").is_dir() else 0


def _wait(what, until, proc, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert proc.poll() is None, f"the job ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_job_survives_losing_the_engine_node_and_a_cpu_node_mid_run(cluster, tmp_path):
    import ray

    gpu_node = cluster.add_node(**_node_resources("gpu"))
    cpu_node = cluster.add_node(**_node_resources("cpu"))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    out, reports = tmp_path / "out", tmp_path / "engines"
    config = _job(tmp_path, cluster.address)
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.preemption", str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait("the first shard", lambda: _ledger(out) >= 1, proc)
        assert set(engine_nodes(reports)) == {gpu_node.node_id}, "the engine replica runs on the GPU node"
        done_before = _ledger(out)
        cluster.remove_node(gpu_node, allow_graceful=False)  # the spot GPU VM is reclaimed
        replacement = cluster.add_node(**_node_resources("gpu"))  # and the autoscaler brings another
        _wait("a new engine replica at work", lambda: replacement.node_id in engine_nodes(reports), proc)

        _wait("a shard done after the engine moved", lambda: _ledger(out) > done_before, proc)
        assert _ledger(out) < ROWS // 16, "the CPU node must go while work is left"
        cluster.remove_node(cpu_node, allow_graceful=False)  # readers, CPU workers and their objects with it
        cluster.add_node(**_node_resources("cpu"))
        assert proc.wait(timeout=120) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        ray.shutdown()

    rows = pq.read_table(out, columns=["id", "task", "status"]).to_pylist()
    keys = Counter((r["id"], r["task"]) for r in rows)
    assert not [k for k, n in keys.items() if n > 1], "duplicated rows"
    assert set(keys) == {(f"r{i:03d}", t) for i in range(ROWS) for t in TASKS}
    assert {r["status"] for r in rows} == {"ok"}
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["finished"] and summary["written_this_run"] == ROWS * len(TASKS), "one run wrote everything"
