"""The whole job, for real: a local Ray cluster, real readers, the real sink and ledger,
parquet read back with pyarrow. The first test also runs the real vLLM engine (CPU build)
on the tiny checkpoint against an S3 API server on 127.0.0.1 (SeaweedFS); the data-plane
tests swap only the media and engine stages for stand-ins (tests/support/stages.py), so
they push hundreds of rows through small shards in seconds."""

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
from internvl_batch.job.output import shard_of_part
from internvl_batch.job.plan import PlanError
from internvl_batch.job.runner import run_job
from tests.support import stages as stand_in

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


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
                  "max_images_per_prompt": 8, "engine_kwargs": {"enforce_eager": True}},
        "preprocess": {"max_num": 4, "multi_image_max_num": 4, "video": {"num_segments": 4}, "fetch": fetch},
        "task": [
            {"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 8}},
            {"name": "qa", "use_row_question": True, "sampling": {"max_tokens": 8}},
        ],
        "runtime": {"use_gpu": False, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 8, "progress_interval_s": 2, "readers": 1,
                    "stall_timeout_s": 300},
        "output": {"path": out_path, "storage_options": storage or {}, "rows_per_file": 4, "flush_interval_s": 1},
    }  # fmt: skip
    for k, v in sections.items():
        cfg[k].update(v)
    return cfg


@pytest.fixture(scope="module")
def ray_cluster():
    import cloudpickle
    import ray

    cloudpickle.register_pickle_by_value(stand_in)  # the stand-in stages travel to Ray's workers
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _output(out) -> list[dict]:
    fs, root = _fs(out)
    parts = fs.glob(f"{root}/part-*.parquet")
    return pq.read_table(parts, filesystem=fs).to_pylist() if parts else []


def _fs(out):
    import fsspec

    return fsspec.core.url_to_fs(str(out)) if not isinstance(out, tuple) else out


def _assert_exactly_once(rows, expected_keys):
    keys = Counter((r["id"], r["task"]) for r in rows)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == set(expected_keys), (set(expected_keys) - set(keys), set(keys) - set(expected_keys))


# -- the real engine, S3 in and out ------------------------------------------------------------


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
        {"id": "a", "image": b},  # duplicate id, in another file and shard
        {"image": a},  # no id
    ]
    put("manifests/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:5]).encode())
    put("manifests/part-1.jsonl", ("".join(json.dumps(r) + "\n" for r in rows[5:]) + "{broken\n").encode())

    job = _job(tiny_model_dir, "s3://pipeline-e2e/manifests/*.jsonl", "s3://pipeline-e2e/out", storage=storage,
               input={"shard_rows": 3})  # fmt: skip
    cfg = JobConfig.model_validate(job)
    summary = run_job(cfg)
    assert summary.finished and summary.duplicate_ids == 1
    assert summary.plan["shards"]["total"] == 4  # 5 rows -> 3 + 2, 5 rows -> 3 + 2

    fs = s3fs.S3FileSystem(**storage)
    assert fs.exists("pipeline-e2e/out/_SUCCESS")
    parts = fs.glob("pipeline-e2e/out/part-*.parquet")
    got = pq.read_table(parts, filesystem=fs).to_pylist()
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
    assert any(r["id"].startswith("a#dup@") for r in invalid)
    by = {(r["id"], r["task"]): r for r in got}
    assert by[("pair", "caption")]["num_tiles"] > by[("a", "caption")]["num_tiles"] / 2
    assert by[("vid", "caption")]["num_tiles"] == 4 and by[("vid", "caption")]["media"] == "video"
    assert by[("a", "caption")]["tag"] == "x" and by[("b", "caption")]["tag"] == "7"
    assert all(r["error"] for r in got if r["status"] != "ok")
    assert all(r["response"] is not None and r["num_output_tokens"] for r in got if r["status"] == "ok")
    assert {r["shard"] for r in got} == {shard_of_part(p) for p in parts}  # parts are per shard
    success = json.loads(fs.cat("pipeline-e2e/out/_SUCCESS"))
    assert sum(success["status_counts"].values()) == 20
    assert len(fs.glob("pipeline-e2e/out/_ledger/*.json")) == 4

    # a second run has nothing to do and writes nothing: the finished run's _SUCCESS stays
    again = run_job(cfg)
    assert again.finished and again.todo_rows == 0 and again.written_this_run == 0
    assert sorted(fs.glob("pipeline-e2e/out/part-*.parquet")) == sorted(parts)
    assert json.loads(fs.cat("pipeline-e2e/out/_SUCCESS")) == success


# -- the data plane, stand-in stages -----------------------------------------------------------


def _rows(n, **extra):
    return [{"id": f"r{i:04d}", "image": f"/media/{i}.jpg", "tag": str(i), **extra} for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _plane_job(tmp_path, manifest, **sections):
    job = _job("unused-model", str(manifest), str(tmp_path / "out"), **sections)
    job["input"] = {"path": str(manifest), "passthrough": ["tag"], "shard_rows": 10, **sections.get("input", {})}
    job["task"] = [{"name": "caption", "preset": "short_caption"}, {"name": "qa", "use_row_question": True}]
    job["runtime"].update({"preprocess_batch_size": 4, "engine_batch_size": 8, **sections.get("runtime", {})})
    return job


def _keys(rows, tasks=("caption", "qa")):
    return {(r["id"], t) for r in rows for t in tasks}


def test_shards_duplicates_and_resume_without_rework(tmp_path, ray_cluster):
    rows = _rows(45, question="Why?")
    rows[30]["id"] = rows[3]["id"]  # a repeated id, in another shard
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows[:25])
    _write_jsonl(tmp_path / "n.jsonl", rows[25:])
    job = _plane_job(tmp_path, tmp_path / "*.jsonl")
    summary = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert summary.finished and summary.duplicate_ids == 1
    assert summary.plan["shards"] == {"total": 5, "done": 0, "todo": 5, "resume": 0, "redo": 0}  # 10+10+5, 10+10
    got = _output(tmp_path / "out")
    dup = [r for r in got if r["id"].startswith("r0003#dup@")]
    assert {r["status"] for r in dup} == {"invalid_row"} and "only its first row" in dup[0]["error"]
    assert dup[0]["id"].endswith("n.jsonl#6")  # the 6th line of the second file
    expected = _keys(rows[:30] + rows[31:]) | {(dup[0]["id"], t) for t in ("caption", "qa")}
    _assert_exactly_once(got, expected)

    # Appended rows: new shards only; earlier parts are not rewritten.
    before = {p: p.read_bytes() for p in (tmp_path / "out").glob("part-*.parquet")}
    more = _rows(52, question="Why?")[45:]
    with manifest.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in more))
    again = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert again.finished and again.written_this_run == 14
    assert again.plan["shards"]["resume"] == 1  # m.jsonl's last shard had 5 rows, now 10 ...
    assert again.plan["shards"]["todo"] == 1  # ... and 2 rows start a new one
    assert all(p.read_bytes() == data for p, data in before.items())
    _assert_exactly_once(_output(tmp_path / "out"), expected | _keys(more))


def test_changed_rows_are_refused_then_redone(tmp_path, ray_cluster):
    rows = _rows(30)
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    job = _plane_job(tmp_path, manifest)
    assert run_job(JobConfig.model_validate(job), stages=stand_in.STAGES).finished
    rows[14]["image"] = "/media/other.jpg"  # shard 1 now holds other rows
    _write_jsonl(manifest, rows)
    with pytest.raises(PlanError, match=r"shard .*-000001 .*rows 10-19.*input.on_change=redo"):
        run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    job["input"]["on_change"] = "redo"
    redone = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert redone.finished and redone.plan["shards"]["redo"] == 1 and redone.written_this_run == 20
    _assert_exactly_once(_output(tmp_path / "out"), _keys(rows))


def test_retry_failed_redoes_only_failed_rows_per_shard(tmp_path, ray_cluster):
    heal = tmp_path / "healed"
    rows = _rows(30, question="Why?")
    for i in (2, 3, 25):
        rows[i]["question"] = f"fail-unless:{heal}"
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    job = _plane_job(tmp_path, manifest)
    first = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert first.finished and first.status_counts == {"ok": 54, "engine_error": 6}
    heal.touch()
    job["runtime"]["retry_failed"] = True
    retried = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert retried.finished and retried.todo_rows == 6 and retried.written_this_run == 6
    assert retried.plan["shards"] == {"total": 3, "done": 1, "todo": 0, "resume": 2, "redo": 0}
    got = _output(tmp_path / "out")
    _assert_exactly_once(got, _keys(rows))
    assert {r["status"] for r in got} == {"ok"}
    assert retried.status_counts == {"ok": 60}


def _run_killable(cfg_path, env):
    cmd = [sys.executable, "-m", "tests.support.stages", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize("where", ["mid_shard", "shard_boundary"])
def test_killed_job_resumes_exactly_once(tmp_path, ray_cluster, where):
    rows = _rows(120, question="Why?")
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    # Shards of 80 (row, task) pairs arrive over several result batches of ~32: a kill can
    # land between two parts of one shard, or right after a shard's ledger entry.
    job = _plane_job(tmp_path, manifest, output={"rows_per_file": 6, "flush_interval_s": 0.2},
                     runtime={"engine_batch_size": 3, "preprocess_batch_size": 1, "engine_batches_in_flight": 1})  # fmt: skip
    job["input"]["shard_rows"] = 40
    job["runtime"]["advanced"] = {"block_kib": 4}  # blocks of ~16 rows: a shard's results arrive over several batches
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job))
    proc = _run_killable(cfg_path, {**os.environ, "INTERNVL_TEST_DELAY_S": "1.0"})
    ledger = out / "_ledger"
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            entries = list(ledger.glob("*.json")) if ledger.exists() else []
            parts = list(out.glob("part-*.parquet"))
            if where == "shard_boundary" and entries:
                break  # right after the first shard's ledger entry
            if where == "mid_shard" and len(parts) >= 2 and not entries:
                break  # parts of a shard that is not complete yet
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    finally:
        proc.wait(timeout=60)
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob(".*.tmp"))  # nothing half-written is visible
    killed = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    done_before = {p.stem for p in ledger.glob("*.json")} if ledger.exists() else set()
    partial = {shard_of_part(n) for n in killed} - done_before
    assert done_before if where == "shard_boundary" else partial

    resumed = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert resumed.finished
    assert resumed.plan["shards"]["done"] >= len(done_before)
    assert resumed.written_this_run == 240 - sum(pq.read_metadata(out / n).num_rows for n in killed)
    assert all((out / n).read_bytes() == data for n, data in killed.items())  # earlier parts untouched
    _assert_exactly_once(_output(out), _keys(rows))
    assert json.loads((out / "_SUCCESS").read_text())["status_counts"] == {"ok": 240}


# -- clips, with the real CPU stage ---------------------------------------------------------------


def test_clips_exactly_once_after_a_kill_mid_video(tmp_path, ray_cluster):
    """Video rows of 5 clips (the last past the end), killed while their clips are in flight:
    no part holds part of a (row, task) pair, and the rerun writes each (id, clip, task) once."""
    video = str(write_sample_video(tmp_path / "v.mp4", frames=48, fps=12.0))  # 4 s
    clips = [[0, 1], [1, 2], [2, 3], [3, 4], [4.5, 5]]
    rows = [{"id": f"v{i}", "video": video, "clips": clips, "question": "What moves?"} for i in range(6)]
    for i in range(6):
        sample_image(seed=i, size=(64, 48)).save(tmp_path / f"{i}.png")
        rows.insert(2 * i, {"id": f"i{i}", "image": str(tmp_path / f"{i}.png"), "question": "What?"})
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    job = _plane_job(tmp_path, manifest, output={"rows_per_file": 4, "flush_interval_s": 0.2},
                     preprocess={"max_num": 1, "video": {"num_segments": 2}},
                     runtime={"engine_batch_size": 3, "engine_batches_in_flight": 1})  # fmt: skip
    job["input"]["shard_rows"] = 6
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "INTERNVL_TEST_DELAY_S": "0.7", "INTERNVL_TEST_REAL_PREPARE": "1"}
    proc = _run_killable(cfg_path, env)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if any(r.get("clip") is not None for r in _output(out)):
                break  # clip rows are coming out: more are in flight
            time.sleep(0.1)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed = _output(out)
    by_pair = Counter((r["id"], r["task"]) for r in killed if r["id"].startswith("v"))
    assert by_pair and all(n == 5 for n in by_pair.values()), by_pair  # whole pairs only
    assert len(by_pair) < 12  # and some pairs were still to come

    resumed = run_job(JobConfig.model_validate(job), stages=stand_in.MEDIA_STAGES)
    assert resumed.finished
    got = _output(out)
    keys = Counter((r["id"], r["clip"], r["task"]) for r in got)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1][:5]
    expected = {(f"v{i}", c, t) for i in range(6) for c in range(5) for t in ("caption", "qa")}
    expected |= {(f"i{i}", None, t) for i in range(6) for t in ("caption", "qa")}
    assert set(keys) == expected
    past = [r for r in got if r["clip"] == 4]
    assert {r["status"] for r in past} == {"invalid_row"} and "clip 4 [4.5, 5] s is past the video's end" in past[0][
        "error"
    ]
    assert all(r["status"] == "ok" and r["num_clips"] == 5 for r in got if r["clip"] in (0, 1, 2, 3))
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["status_counts"] == {"ok": 12 + 48, "invalid_row": 12}
