"""The engine stage under failure, for real: the job's CLI in a subprocess (its own local
Ray), the real vLLM engine (CPU build) on the tiny checkpoint, and processes killed the
way a CUDA fault, the OOM killer or a GPU Xid kills them."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from internvl_batch.devtools.sample_media import sample_image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
ENGINE_CORE = "VLLM::EngineCore"
ENGINE_ACTOR = "MapWorker(MapBatches(InferenceStage))"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-failures")
    rows = []
    for i in range(24):
        path = root / f"img{i}.png"
        sample_image(seed=i, size=(320 + 8 * i, 240)).save(path)
        rows.append({"id": f"r{i}", "image": str(path)})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, model_dir, manifest, **runtime):
    job = {
        "input": {"path": str(manifest), "shard_rows": 8},
        "model": {"path": str(model_dir), "dtype": "float32", "max_model_len": 4096, "max_num_seqs": 4,
                  "engine_kwargs": {"enforce_eager": True}},
        "preprocess": {"max_num": 2},
        # Every answer exactly 96 tokens: the engine is still busy when the first part lands, to
        # be killed then. (Without min_tokens the tiny model's answers sometimes stopped at once,
        # and the job could end before the kill: seen in CI.)
        "task": [{"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 96, "min_tokens": 96}}],
        "runtime": {"use_gpu": False, "cpu_workers": 1, "cpus_per_worker": 0.5, "engine_cpus": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 4, "engine_batches_in_flight": 2,
                    "stall_timeout_s": 300, "progress_interval_s": 2, **runtime},
        "output": {"path": str(tmp_path / "out"), "rows_per_file": 4, "flush_interval_s": 1},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _start(cfg_path, log):
    cmd = [sys.executable, "-m", "internvl_batch.cli", "run", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _find(proc, marker, timeout=300, other_than=None):
    """A descendant of the job's process whose name or command line holds `marker` (and whose
    pid is not `other_than`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                # A killed engine core lingers as a zombie until its actor reaps it: not a live one.
                live = p.status() != psutil.STATUS_ZOMBIE and p.pid != other_than
                if live and (marker in p.name() or marker in " ".join(p.cmdline())):
                    return p
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process {marker!r} appeared (job exit code {proc.poll()})")


def _wait_for_parts(out, n, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while len(list(out.glob("part-*.parquet"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before the kill"
        time.sleep(0.2)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _assert_exactly_once(out, n_rows):
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    keys = Counter(zip(table["id"].to_pylist(), table["task"].to_pylist()))
    assert len(keys) == n_rows and set(keys.values()) == {1}, keys.most_common(3)
    return table


def test_engine_core_and_actor_killed_mid_run_job_finishes_exactly_once(tmp_path, tiny_model_dir, manifest):
    cfg = _config(tmp_path, tiny_model_dir, manifest, max_engine_restarts=2)
    out = tmp_path / "out"
    with open(tmp_path / "log", "wb") as log:
        proc = _start(cfg, log)
        try:
            _wait_for_parts(out, 1, proc)
            first_core = _find(proc, ENGINE_CORE)
            first_core.kill()  # the engine dies under its actor: the actor must not live on around it
            # A fresh engine (a new actor process) comes up and work goes on ...
            deadline = time.monotonic() + 300
            while _find(proc, ENGINE_CORE).pid == first_core.pid and time.monotonic() < deadline:
                time.sleep(0.5)
            parts_then = len(list(out.glob("part-*.parquet")))
            _wait_for_parts(out, parts_then + 1, proc)
            # ... then the whole actor is killed, engine and all.
            _find(proc, ENGINE_ACTOR).kill()
            assert proc.wait(timeout=600) == 0, (tmp_path / "log").read_text()[-3000:]
        finally:
            _stop(proc)
    _assert_exactly_once(out, 24)
    success = json.loads((out / "_SUCCESS").read_text())
    # The core's death was reported by its actor; the actor's own death could not be, and
    # was counted when Ray restarted it.
    assert success["engine"]["failures"] == 2
    assert sum(success["status_counts"].values()) == 24


def test_engine_deaths_beyond_the_limit_fail_fast_naming_the_cause(tmp_path, tiny_model_dir, manifest):
    # (A rerun after a failed run resumes exactly once: tests/job/test_reliability.py's
    # fails_for_good, without a second vLLM start here.)
    cfg = _config(tmp_path, tiny_model_dir, manifest, max_engine_restarts=0)
    out = tmp_path / "out"
    with open(tmp_path / "log", "wb") as log:
        proc = _start(cfg, log)
        try:
            _wait_for_parts(out, 1, proc)
            _find(proc, ENGINE_CORE).kill()
            killed = time.monotonic()
            code = proc.wait(timeout=120)
            took = time.monotonic() - killed
        finally:
            _stop(proc)
    text = (tmp_path / "log").read_text()
    assert code == 1, text[-3000:]
    assert took < 60, f"exited {took:.0f}s after the engine died"
    assert "the engine failed 1 times in a row (runtime.max_engine_restarts=0)" in text
    assert "last: vLLM engine failed: EngineDeadError" in text  # the cause, as vLLM reported it
    assert not (out / "_SUCCESS").exists()


def test_engine_actor_sigkilled_again_and_again_fails_fast_naming_it(tmp_path, tiny_model_dir, manifest):
    """The OOM killer's way: the actor dies with no chance to report; Ray restarts it in place.
    The driver counts those deaths too, so they can't loop until the stall timeout."""
    cfg = _config(tmp_path, tiny_model_dir, manifest, max_engine_restarts=1)
    with open(tmp_path / "log", "wb") as log:
        proc = _start(cfg, log)
        try:
            pid = 0
            for _ in range(2):  # one death is within the limit, the second is not
                actor = _find(proc, ENGINE_ACTOR, other_than=pid)
                time.sleep(2)  # let it start (and report its start) before it dies
                pid = actor.pid
                actor.kill()
            killed = time.monotonic()
            code = proc.wait(timeout=180)
            took = time.monotonic() - killed
        finally:
            _stop(proc)
    text = (tmp_path / "log").read_text()
    assert code == 1, text[-3000:]
    assert took < 60, f"exited {took:.0f}s after the second kill"
    assert "the engine failed 2 times in a row (runtime.max_engine_restarts=1)" in text
    assert "died without reporting why and Ray restarted it" in text
    assert "memory is" in text  # the likely cause's evidence, read on the node
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_an_engine_that_cannot_start_fails_fast_naming_the_cause(tmp_path, tiny_model_dir, manifest):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = _config(tmp_path, broken, manifest, max_engine_restarts=0)
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "internvl_batch.cli", "run", str(cfg)], cwd=REPO,
                         capture_output=True, timeout=600)  # fmt: skip
    took = time.monotonic() - start
    text = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 1, text[-3000:]
    assert "engine failed to start" in text
    assert took < 240, f"took {took:.0f}s to give up on an engine that cannot start"
    assert not (tmp_path / "out" / "_SUCCESS").exists()
