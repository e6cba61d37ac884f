"""The whole job, for real: S3 API server on 127.0.0.1 (SeaweedFS), a local Ray cluster, the
real vLLM engine (CPU build) on the tiny checkpoint, parquet read back with pyarrow."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from internvl_batch.config import JobConfig
from internvl_batch.devtools.sample_media import sample_image, write_sample_video
from internvl_batch.job.runner import run_job

pytestmark = pytest.mark.slow


def _png(seed, size):
    buf = io.BytesIO()
    sample_image(seed=seed, size=size).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(seed, size):
    buf = io.BytesIO()
    sample_image(seed=seed, size=size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _job(model_dir, manifest, out_path, *, storage=None, **sections):
    fetch = {"storage_options": {"s3": storage}} if storage else {}
    cfg = {
        "input": {"path": manifest, "storage_options": storage or {}, "passthrough": ["tag"]},
        "model": {"path": str(model_dir), "dtype": "float32", "max_model_len": 8192, "max_num_seqs": 8,
                  "max_images_per_prompt": 8, "enforce_eager": True, "cpu_kvcache_gib": 1},
        "preprocess": {"max_num": 4, "multi_image_max_num": 4, "video": {"num_segments": 4}, "fetch": fetch},
        "task": [
            {"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 8}},
            {"name": "qa", "use_row_question": True, "sampling": {"max_tokens": 8}},
        ],
        "runtime": {"use_gpu": False, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 8, "progress_interval_s": 2},
        "output": {"path": out_path, "storage_options": storage or {}, "rows_per_file": 4, "flush_interval_s": 1},
    }  # fmt: skip
    for k, v in sections.items():
        cfg[k].update(v)
    return cfg


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_s3_manifest_to_s3_parquet_exactly_once(s3, tiny_model_dir, tmp_path, ray_cluster):
    import s3fs

    storage = s3.create_bucket("pipeline-e2e")
    put = lambda key, data: s3.put_object("pipeline-e2e", key, data)  # noqa: E731
    a, b = put("media/a.png", _png(1, (640, 480))), put("media/b.jpg", _jpeg(2, (300, 900)))
    c = put("media/c.jpg", _jpeg(3, (1200, 300)))
    video = put("media/clip.mp4", write_sample_video(tmp_path / "clip.mp4", frames=36).read_bytes())
    corrupt = put("media/corrupt.jpg", _jpeg(4, (200, 200))[:300])
    rows = [
        {"id": "a", "image": a, "tag": "x", "question": "What is this?"},
        {"id": "b", "image": b, "tag": 7},
        {"id": "c", "image": c},
        {"id": "pair", "image": [a, c], "question": "Which is wider?"},
        {"id": "vid", "video": video, "start": 0.5, "end": 2.5, "question": "What moves?"},
        {"id": "missing", "image": "s3://pipeline-e2e/media/nope.png"},
        {"id": "corrupt", "image": corrupt},
        {"id": "a", "image": b},  # duplicate id
        {"image": a},  # no id
    ]
    put("manifests/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:5]).encode())
    put("manifests/part-1.jsonl", ("".join(json.dumps(r) + "\n" for r in rows[5:]) + "{broken\n").encode())

    cfg = JobConfig.model_validate(
        _job(tiny_model_dir, "s3://pipeline-e2e/manifests/*.jsonl", "s3://pipeline-e2e/out", storage=storage)
    )
    summary = run_job(cfg)
    assert summary.finished

    fs = s3fs.S3FileSystem(**storage)
    assert fs.exists("pipeline-e2e/out/_SUCCESS")
    parts = fs.glob("pipeline-e2e/out/part-*.parquet")
    table = pq.read_table(parts, filesystem=fs)
    got = table.to_pylist()
    keys = Counter((r["id"], r["task"]) for r in got)
    assert all(n == 1 for n in keys.values()), keys
    assert len(got) == 10 * 2  # 9 rows + the broken line, 2 tasks each
    status = {(r["id"], r["task"]): r["status"] for r in got}
    for rid in ("a", "b", "c", "pair", "vid"):
        assert status[(rid, "caption")] == "ok"
    assert status[("a", "qa")] == status[("pair", "qa")] == status[("vid", "qa")] == "ok"
    assert status[("b", "qa")] == "invalid_row"  # that task asks the row's question; b has none
    assert status[("missing", "caption")] == "fetch_error"
    assert status[("corrupt", "caption")] == "decode_error"
    invalid = [r for r in got if r["status"] == "invalid_row" and r["task"] == "caption"]
    assert len(invalid) == 3  # duplicate id, missing id, broken JSON
    by = {(r["id"], r["task"]): r for r in got}
    assert by[("pair", "caption")]["num_tiles"] > by[("a", "caption")]["num_tiles"] / 2
    assert by[("vid", "caption")]["num_tiles"] == 4 and by[("vid", "caption")]["media"] == "video"
    assert by[("a", "caption")]["tag"] == "x" and by[("b", "caption")]["tag"] == "7"
    assert all(r["error"] for r in got if r["status"] != "ok")
    assert all(r["response"] is not None and r["num_output_tokens"] for r in got if r["status"] == "ok")
    success = json.loads(fs.cat("pipeline-e2e/out/_SUCCESS"))
    assert sum(success["status_counts"].values()) == 20

    # a second run has nothing to do and writes nothing
    again = run_job(cfg)
    assert again.finished and again.todo_rows == 0 and again.written_this_run == 0
    assert sorted(fs.glob("pipeline-e2e/out/part-*.parquet")) == sorted(parts)


def _part_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def test_killed_job_resumes_exactly_once_and_retry_failed_redoes_failures(tiny_model_dir, tmp_path, ray_cluster):
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for i in range(12):
        path = media / f"img{i}.png"
        sample_image(seed=i, size=(320 + 16 * i, 240)).save(path)
        rows.append({"id": f"r{i}", "image": str(path), "question": "Why?"})
    late = media / "late.png"  # missing at first: a fetch_error that retry_failed later fixes
    rows.append({"id": "late", "image": str(late), "question": "Why?"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg_path = tmp_path / "job.yaml"
    job = _job(tiny_model_dir, str(manifest), str(out),
               runtime={"engine_batch_size": 2, "preprocess_batch_size": 1},
               output={"rows_per_file": 2, "flush_interval_s": 0.5})  # fmt: skip
    cfg_path.write_text(yaml.safe_dump(job))

    cmd = [sys.executable, "-m", "internvl_batch.cli", "run", str(cfg_path)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 400
        while len(_part_files(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    finally:
        proc.wait(timeout=60)
    killed = {p.name: p.read_bytes() for p in _part_files(out)}
    assert 2 <= sum(pq.read_metadata(out / n).num_rows for n in killed) < 26
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob(".*.tmp"))  # nothing half-written is visible

    # resume, then retry_failed, in this process on the module's Ray cluster
    resumed = run_job(JobConfig.model_validate(job))
    assert resumed.finished
    assert resumed.written_this_run == 26 - sum(pq.read_metadata(out / n).num_rows for n in killed)
    assert all((out / n).read_bytes() == data for n, data in killed.items())  # earlier parts untouched
    table = pq.read_table(out)
    keys = Counter(zip(table["id"].to_pylist(), table["task"].to_pylist()))
    assert len(keys) == 26 and set(keys.values()) == {1}
    status = dict(zip(zip(table["id"].to_pylist(), table["task"].to_pylist()), table["status"].to_pylist()))
    assert status[("late", "caption")] == "fetch_error"

    sample_image(seed=99, size=(300, 300)).save(late)
    retried = run_job(JobConfig.model_validate({**job, "runtime": {**job["runtime"], "retry_failed": True}}))
    assert retried.finished and retried.todo_rows == 2
    table = pq.read_table(out)
    keys = Counter(zip(table["id"].to_pylist(), table["task"].to_pylist()))
    assert len(keys) == 26 and set(keys.values()) == {1}
    assert set(table["status"].to_pylist()) == {"ok"}
    assert json.loads((out / "_SUCCESS").read_text())["status_counts"] == {"ok": 26}


def test_dry_run_plans_without_running(tiny_model_dir, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "image": "/nowhere.png"}) + "\n{bad\n")
    cfg = JobConfig.model_validate(_job(tiny_model_dir, str(manifest), str(tmp_path / "out")))
    summary = run_job(cfg, dry_run=True)
    assert summary.finished and summary.todo_rows == 4 and summary.manifest_rows == 2
    assert not list((tmp_path / "out").glob("part-*"))
