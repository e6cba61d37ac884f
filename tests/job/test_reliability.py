"""Reliability of the whole job (issue #13): object storage that misbehaves, a driver killed
at the worst moments, hostile input at volume, and credentials that must not leak.

Every test runs the real job (planner, duplicate pass, readers, sink, ledger, verify,
_SUCCESS) on a local Ray cluster. The engine is the stand-in (tests/support/stages.py)
wherever the engine is not the point; media go through the real PrepareStage where they
are. S3 is the real S3 API server (tests/support/s3server.py), behind the fault-injecting
proxy (tests/support/faultproxy.py) where faults are the point. Every test ends by reading
the output back and checking that every (id, task) is there exactly once, with its status.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest
import yaml

from internvl_batch.config import JobConfig
from internvl_batch.devtools.hf_engine import on_hf_engine
from internvl_batch.job.monitor import JobFailed
from internvl_batch.job.output import shard_of_part
from internvl_batch.job.runner import run_job
from internvl_batch.status import Status
from tests.support import flakyfs, hostile, reliability
from tests.support import stages as stand_in
from tests.support.faultproxy import KINDS, FaultProxy, Faults
from tests.support.flakyfs import Fault

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BUCKET = "reliability"
TASKS = ("caption", "detail")
TIMEOUT_S = 1.0  # the S3 clients' read timeout in the fault test; stalls last longer
STALL_S = 1.5
# Faults are drawn per (seed, request, how many times it was seen): with this seed some fall
# on objects whose names do not change between runs (manifests, ledger entries, state), so
# every kind of I/O meets faults on every run, whatever the random part names get.
FAULT_SEED = 33


@pytest.fixture(scope="module")
def ray_cluster():
    import cloudpickle
    import ray

    for module in (stand_in, reliability, flakyfs):
        cloudpickle.register_pickle_by_value(module)  # Ray's workers need not find `tests`
    # s3fs's own retry loop off in every worker: the faults reach the job's retries. The hook
    # is imported by name (Ray unpickles it with plain pickle), so the workers see the repo.
    hook = {"worker_process_setup_hook": "tests.support.reliability.no_sdk_retries",
            "env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=hook)
    yield ray
    ray.shutdown()


def _job(manifest: str, out: str, *, storage: dict | None = None, **sections: dict) -> dict:
    job = {
        "input": {"path": manifest, "storage_options": storage or {}, "shard_rows": 20},
        "model": {"path": "unused-model"},
        "preprocess": {"max_num": 1, "multi_image_max_num": 2},
        "task": [{"name": "caption", "preset": "short_caption"}, {"name": "detail", "preset": "detailed_caption"}],
        "runtime": {"use_gpu": False, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 1, "readers": 1,
                    "preprocess_batch_size": 4, "engine_batch_size": 16, "progress_interval_s": 5,
                    "stall_timeout_s": 300},
        "output": {"path": out, "storage_options": storage or {}, "rows_per_file": 8, "flush_interval_s": 1},
    }  # fmt: skip
    for name, values in sections.items():
        job[name] = {**job[name], **values}
    return job


def _jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _keys(ids) -> set[tuple[str, str]]:
    return {(i, t) for i in ids for t in TASKS}


def _assert_exactly_once(rows: list[dict], expected: set[tuple[str, str]]) -> None:
    keys = Counter((r["id"], r["task"]) for r in rows)
    assert not [k for k, n in keys.items() if n > 1], "duplicated rows"
    assert set(keys) == expected, (sorted(expected - set(keys))[:5], sorted(set(keys) - expected)[:5])


class Bucket:
    """The output as the store holds it, read past the proxy (boto3 straight to the server)."""

    def __init__(self, s3, name: str):
        self.client, self.name = s3.client(), name

    def keys(self, prefix: str) -> dict[str, str]:
        """{key under prefix: ETag}"""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            found.update({o["Key"][len(prefix) :]: o["ETag"] for o in page.get("Contents", [])})
        return found

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def parts(self, prefix: str) -> list[tuple[str, list[dict]]]:
        """(name, rows) of every part: each must read whole."""
        names = sorted(k for k in self.keys(prefix) if k.startswith("part-"))
        return [(n, pq.read_table(io.BytesIO(self.get(prefix + n))).to_pylist()) for n in names]


def _check_output_objects(bucket: Bucket, prefix: str) -> list[dict]:
    """Only parts, ledger entries, state, the run report and _SUCCESS: no temporary or hidden
    object; each part whole and holding one shard's rows. Returns every row."""
    keys = bucket.keys(prefix)
    strays = [
        k
        for k in keys
        if not re.fullmatch(r"part-[^/]+\.parquet|_ledger/[^/.][^/]*\.json|_state/.+|_SUCCESS|_report\.(html|png)", k)
    ]
    assert not strays and not [k for k in keys if "/." in "/" + k or k.endswith(".tmp")], strays
    rows = []
    for name, part in bucket.parts(prefix):
        assert part and {r["shard"] for r in part} == {shard_of_part(name)}, name
        rows += part
    return rows


# -- object storage that misbehaves ------------------------------------------------------------


def test_five_percent_storage_faults_are_retried_and_every_row_comes_out_once(s3, ray_cluster, monkeypatch):
    """5 % of requests fail (500, 503 SlowDown, a reset mid-body, a stall past the read timeout)
    on media reads, manifest reads, listings and output writes; the SDKs' own retries are off,
    so every fault reaches the job's retries. The job finishes, every (id, task) once, the
    retries counted in _SUCCESS; media that never comes back is a fetch_error row."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # the driver's s3fs too
    s3.create_bucket(BUCKET)
    base, bucket = "faults", Bucket(s3, BUCKET)
    media = [s3.put_object(BUCKET, f"{base}/media/{i:02d}.jpg", hostile.jpeg(64, 48, i)) for i in range(24)]
    rows, expected = [], {}
    for i in range(200):
        rid = f"f{i:03d}"
        if i % 25 == 7:
            url, status = f"s3://{BUCKET}/{base}/media/missing-{i}.jpg", "not found"
        elif i % 40 == 13:
            url = s3.put_object(BUCKET, f"{base}/media/throttled/{i}.jpg", hostile.jpeg(32, 32, i))
            status = "giving up after 4 attempts"
        else:
            url, status = media[i % len(media)], Status.OK
        rows.append({"id": rid, "image": url})
        expected[rid] = status
    for name, part in (("a", rows[:100]), ("b", rows[100:])):
        s3.put_object(BUCKET, f"{base}/manifests/{name}.jsonl", _jsonl(part))

    with FaultProxy(s3.endpoint_url, seed=FAULT_SEED) as proxy:
        share = 0.05 / len(KINDS)
        faults = Faults(error_500=share, slow_down_503=share, reset=share, stall=share, stall_s=STALL_S)
        for where in ("media", "manifests", "out"):
            proxy.set_faults(f"/{BUCKET}/{base}/{where}/", faults)
        proxy.set_faults(f"/{BUCKET}", replace(faults, request_types=frozenset({"LIST"})))  # listings: bucket path
        proxy.set_faults(f"/{BUCKET}/{base}/media/throttled/", Faults(slow_down_503=1.0))
        storage = proxy.s3_options(s3.storage_options)
        storage["config_kwargs"] = {"retries": {"total_max_attempts": 1}, "read_timeout": TIMEOUT_S}
        fetch = {"storage_options": {"s3": storage}, "max_attempts": 4, "backoff_initial_s": 0.05,
                 "backoff_max_s": 0.2, "timeout_s": TIMEOUT_S}  # fmt: skip
        job = _job(f"s3://{BUCKET}/{base}/manifests/*.jsonl", f"s3://{BUCKET}/{base}/out", storage=storage,
                   preprocess={"max_num": 1, "fetch": fetch})  # fmt: skip
        started = time.monotonic()
        summary = run_job(JobConfig.model_validate(job), stages={"inference": stand_in.EchoInference})
        elapsed = time.monotonic() - started
        injected, requests, log = proxy.injected, proxy.requests, proxy.log

    assert summary.finished
    got = _check_output_objects(bucket, f"{base}/out/")
    _assert_exactly_once(got, _keys(expected))
    for r in got:
        want = expected[r["id"]]
        if want == Status.OK:
            assert r["status"] == Status.OK, (r["id"], r["error"])
        else:
            assert r["status"] == Status.FETCH_ERROR and want in r["error"], (r["id"], r["error"])
    counters = json.loads(bucket.get(f"{base}/out/_SUCCESS"))["counters"]
    print(f"\n{len(got)} rows in {elapsed:.1f}s; {sum(requests.values())} requests {dict(requests)}; "
          f"injected {dict(injected)}; counters {counters}")  # fmt: skip

    # Every kind of fault was injected, on each kind of I/O the job does.
    assert all(proxy.injected_total(kind) for kind in KINDS), injected
    paths = [target.split("?")[0] for _, target, fault in log if fault]
    faulted = Counter(p.split("/")[3] if p.count("/") > 2 else "LIST" for p in paths)
    assert faulted["media"] and faulted["manifests"] and faulted["out"] and faulted["LIST"], faulted
    # ... and was retried where it landed, counted in _SUCCESS.
    ops = {k.removeprefix("storage_retries_"): n for k, n in counters.items() if k.startswith("storage_retries_")}
    assert ops.get("manifest_plan", 0) + ops.get("manifest_read", 0) + ops.get("manifest_dedup", 0) > 0, ops
    assert ops.get("output_write", 0) > 0 and counters["storage_retries"] == sum(ops.values()), ops
    assert counters["fetch_retries"] > 0
    throttled = sum(1 for s in expected.values() if s == "giving up after 4 attempts")
    assert counters["fetch_exhausted"] == throttled  # every other fetch got through within its attempts
    # One failed attempt per fault at most: no retry without a fault behind it.
    retries = counters["storage_retries"] + counters["fetch_retries"]
    assert retries <= sum(injected.values()) + 5  # a loaded machine's stray timeout or so


# -- a read that fails mid-way -----------------------------------------------------------------


def _local_manifest(tmp_path: Path, n: int = 100) -> tuple[Path, list[str]]:
    ids = [f"m{i:03d}" for i in range(n)]
    path = tmp_path / "m.jsonl"
    path.write_bytes(_jsonl([{"id": i, "image": f"/media/{i}.jpg"} for i in ids]))
    return path, ids


def _local_rows(out: Path) -> list[dict]:
    parts = sorted(out.glob("part-*.parquet"))
    return [r for p in parts for r in pq.read_table(p).to_pylist()]


def test_a_split_read_that_fails_for_good_fails_the_job_and_the_rerun_skips_nothing(tmp_path, ray_cluster):
    """A split's read refused half-way (not transient: no retry). The job fails, naming the
    cause, without _SUCCESS; the rerun writes the rows that are missing and only those. (A
    read cut by transient errors resumes where it was cut: tests/storage/test_retry.py,
    and the fault test above at job level.)"""
    manifest, ids = _local_manifest(tmp_path)
    out = tmp_path / "out"
    job = _job(
        str(manifest), str(out), runtime={"cpu_workers": 1}, output={"rows_per_file": 4, "flush_interval_s": 0.1}
    )
    # Every open is cut at byte 3000: the splits before it read whole, the one across it fails.
    refused = Fault("open", lambda: PermissionError(13, "Access Denied"), times=-1, after=3000)
    with pytest.raises(JobFailed, match=r"(?s)(the pipeline|the read stage) failed: .*PermissionError.*Access Denied"):
        run_job(JobConfig.model_validate(job), stages={**stand_in.STAGES, "read": reliability.flaky_read([refused])})
    assert not (out / "_SUCCESS").exists()
    before = _local_rows(out)  # what reached the sink before the failure, if anything
    assert len(before) < 2 * len(ids)
    resumed = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert resumed.finished and resumed.written_this_run == 2 * len(ids) - len(before)
    _assert_exactly_once(_local_rows(out), _keys(ids))


def test_a_reader_failure_fails_the_job_even_when_ray_data_never_delivers_it(tmp_path, ray_cluster):
    """Ray Data's abort can block on a stage's other tasks (seen: a reader held by
    backpressure) and never raise on the driver. The failing reader reports to the job
    monitor first, so the job fails at the next poll, naming the cause, not at the stall
    timeout. Here the failing reader blocks after its report, as Ray Data would."""
    manifest, _ = _local_manifest(tmp_path)
    job = _job(str(manifest), str(tmp_path / "out"), runtime={"stall_timeout_s": 600})
    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"the read stage failed: OSError: disk on fire"):
        run_job(JobConfig.model_validate(job), stages={**stand_in.STAGES, "read": reliability.BlockedAfterReport})
    assert time.monotonic() - started < reliability.BlockedAfterReport.BLOCK_S
    # The failed run's stage actors are ended: the cluster's CPUs are free again for whoever comes next.
    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray_cluster.available_resources()
        time.sleep(0.5)


# -- the driver killed at the worst moments ----------------------------------------------------


@pytest.fixture(scope="module")
def crash_manifest(s3):
    """120 rows in two files on S3: 6 shards of 20."""
    s3.create_bucket(BUCKET)
    ids = [f"c{i:03d}" for i in range(120)]
    for name, part in (("a", ids[:60]), ("b", ids[60:])):
        s3.put_object(
            BUCKET, f"crash/manifests/{name}.jsonl", _jsonl([{"id": i, "image": f"/m/{i}.jpg"} for i in part])
        )
    return ids


def _start(cfg_path: Path, ray_tmp: str, logs: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    with open(logs, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.support.stages", str(cfg_path)], cwd=REPO, env=env,
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def _killed_when(proc: subprocess.Popen, ready, timeout_s: float = 240) -> None:
    """SIGKILL the process group (the driver and the Ray it started) once `ready()`."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("where", ["planning", "before_success"])
def test_driver_killed_then_rerun_finishes_exactly_once(s3, crash_manifest, ray_cluster, tmp_path, where):
    """The driver killed while it plans, and after the last ledger entry but before _SUCCESS.
    The windows come from the store, not from hooks in the job: the planner's manifest read
    stalls; the store refuses _SUCCESS (500) and the job keeps retrying it. (Killed mid-run,
    between parts of a shard and right after a ledger entry, on a local output:
    tests/job/test_runner.py::test_killed_job_resumes_exactly_once.)"""
    bucket, prefix = Bucket(s3, BUCKET), f"crash-{where}/out/"
    cfg_path, log = tmp_path / "job.yaml", tmp_path / "driver.log"
    with FaultProxy(s3.endpoint_url, seed=3) as proxy:
        storage = proxy.s3_options(s3.storage_options)
        # botocore's own retries off: the refused marker reaches the job's retries (and its log) at once
        storage["config_kwargs"] = {"retries": {"total_max_attempts": 1}}
        if where == "planning":
            stall = Faults(stall=1.0, stall_s=120, request_types=frozenset({"GET"}))
            proxy.set_faults(f"/{BUCKET}/crash/manifests/", stall)
            ready = lambda: any(f == "stall" for _, _, f in proxy.log)  # noqa: E731 - a planning task reads a manifest
        else:
            proxy.set_faults(f"/{BUCKET}/{prefix}_SUCCESS", Faults(error_500=1.0, request_types=frozenset({"PUT"})))
            retrying = re.compile(r"output_write of \S+/_SUCCESS failed")
            ready = lambda: retrying.search(log.read_text(errors="replace"))  # noqa: E731 - the job retries it
        job = _job(f"s3://{BUCKET}/crash/manifests/*.jsonl", f"s3://{BUCKET}/{prefix.rstrip('/')}",
                   storage=storage, runtime={"cpu_workers": 1})  # fmt: skip
        cfg_path.write_text(yaml.safe_dump(job))
        ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths have a length limit
        started = time.monotonic()
        try:
            _killed_when(_start(cfg_path, ray_tmp, log), ready)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        killed_after = time.monotonic() - started
        at_kill = bucket.keys(prefix)
        parts_at_kill = {k: etag for k, etag in at_kill.items() if k.startswith("part-")}
        assert "_SUCCESS" not in at_kill
        if where == "planning":
            assert not parts_at_kill and not [k for k in at_kill if k.startswith("_ledger/")]
        else:  # every shard's entry was in: only the marker was missing
            assert sum(k.startswith("_ledger/") for k in at_kill) == 6

        proxy.clear()  # the store is well again
        resumed = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)

    assert resumed.finished
    rows_at_kill = sum(len(rows) for name, rows in bucket.parts(prefix) if name in parts_at_kill)
    print(f"\n{where}: killed after {killed_after:.1f}s with {rows_at_kill} rows x tasks in; the rerun planned "
          f"{resumed.plan['shards']} and wrote {resumed.written_this_run}")  # fmt: skip
    if where == "planning":
        assert resumed.plan["shards"]["todo"] == 6
    else:
        assert resumed.plan["shards"]["done"] == 6 and rows_at_kill == 2 * 120
    assert resumed.written_this_run == 2 * 120 - rows_at_kill  # nothing redone, nothing skipped
    after = bucket.keys(prefix)
    assert all(after.get(k) == etag for k, etag in parts_at_kill.items())  # earlier parts untouched
    _assert_exactly_once(_check_output_objects(bucket, prefix), _keys(crash_manifest))
    assert json.loads(bucket.get(prefix + "_SUCCESS"))["status_counts"] == {"ok": 240}


# -- hostile input at volume -------------------------------------------------------------------

# Rows the manifest reader turns into invalid_row: (record or raw line, what the error says).
MANIFEST_KINDS = {
    "broken_json": (lambda n, img, vid: f'{{"id": "broken{n}", "image": ', "is not valid JSON"),
    "not_an_object": (lambda n, img, vid: '["a", "list"]', "is not a JSON object"),
    "missing_id": (lambda n, img, vid: {"image": img}, "missing 'id'"),
    "duplicate_id": (lambda n, img, vid: {"id": None, "image": img}, "only its first row is processed"),
    "no_media": (lambda n, img, vid: {"id": f"nomedia{n}", "question": "?"}, "no 'image' or 'video'"),
    "empty_image_list": (lambda n, img, vid: {"id": f"empty{n}", "image": []}, "a non-empty list of those"),
    "image_not_a_url": (lambda n, img, vid: {"id": f"number{n}", "image": 42}, "a non-empty list of those"),
    "image_and_video": (lambda n, img, vid: {"id": f"both{n}", "image": img, "video": vid}, "not both"),
    "end_before_start": (lambda n, img, vid: {"id": f"range{n}", "video": vid, "start": 3, "end": 1}, "is not after"),
    "start_not_a_number": (lambda n, img, vid: {"id": f"start{n}", "video": vid, "start": "soon"}, "not a number"),
}  # fmt: skip
ROWS, BAD_SHARE = 1000, 0.10
PEAK_RSS_BUDGET_MB = 1500  # a worker decodes one image of at most decode.max_pixels at a time


@pytest.fixture(scope="module")
def hostile_manifest(s3, tmp_path_factory):
    """ROWS rows, BAD_SHARE of them bad in 30 ways (10 the manifest reader catches, 20 the
    media stage does, on local files, S3 and URLs), and some merely odd media that must pass.
    Returns (manifest, media root, {(id, task): (status, what its error says)})."""
    import random

    tmp = tmp_path_factory.mktemp("hostile-job")
    stores = {"local": hostile.LocalStore(tmp / "media"), "s3": hostile.S3Store(s3, "reliability-hostile"), "url": None}
    good = [stores[w].put(f"ok/{n}.jpg", hostile.jpeg(64, 48, n)) for w in ("local", "s3") for n in range(8)]
    videos = [stores[w].put(f"ok/clip{n}.mp4", hostile.video(frames=12 + n)) for w in ("local", "s3") for n in range(2)]
    rng = random.Random(5)
    entries = []  # (kind, record or raw line, status, what the error must say)
    bad_media = [k for k in hostile.KINDS.values() if k.status != Status.OK]
    kinds = list(MANIFEST_KINDS) + [k.name for k in bad_media]
    for n in range(int(ROWS * BAD_SHARE)):
        kind = kinds[n % len(kinds)]
        if kind in MANIFEST_KINDS:
            make, says = MANIFEST_KINDS[kind]
            entries.append((kind, make(n, rng.choice(good), rng.choice(videos)), Status.INVALID_ROW, says))
            continue
        k = hostile.KINDS[kind]
        fields = k.make(stores[k.stores[(n // len(kinds)) % len(k.stores)]], f"bad/{kind}-{n}")
        media = {"image": fields["images"]} if fields["media"] == "image" else {"video": fields["video"]}
        entries.append((kind, {"id": f"bad{n}", **media}, k.status, fields["names"]))
    odd_ok = [k for k in hostile.KINDS.values() if k.status == Status.OK]
    for n, k in enumerate(odd_ok * 2):
        fields = k.make(stores[k.stores[n % len(k.stores)]], f"odd/{k.name}-{n}")
        media = {"image": fields["images"]} if fields["media"] == "image" else {"video": fields["video"]}
        entries.append((k.name, {"id": f"odd{n}", **media, "question": fields.get("question")}, Status.OK, None))
    for n in range(ROWS - len(entries)):
        media = {"video": rng.choice(videos)} if n % 50 == 0 else {"image": rng.sample(good, 2 if n % 10 == 1 else 1)}
        entries.append(("ok", {"id": f"ok{n}", **media}, Status.OK, None))
    rng.shuffle(entries)
    entries.insert(0, entries.pop(next(i for i, e in enumerate(entries) if e[0] == "ok")))  # a good row first

    path = tmp / "manifest.jsonl"
    expected, lines, seen_ok = {}, [], []
    for line, (kind, rec, status, says) in enumerate(entries, start=1):
        if kind == "duplicate_id":
            rec = {**rec, "id": seen_ok.pop()}  # an id an earlier good row has: that row keeps it
        lines.append(rec)
        if isinstance(rec, str) or "id" not in rec:
            rid = f"{path}#{line}"
        elif kind == "duplicate_id":
            rid = f"{rec['id']}#dup@{path}#{line}"
        else:
            rid = rec["id"]
            if kind == "ok":
                seen_ok.append(rid)
        for task in TASKS:
            expected[(rid, task)] = (status, says)
    path.write_bytes(_jsonl(lines))
    kinds_used = Counter(kind for kind, _, status, _ in entries if status != Status.OK)
    return path, tmp / "media", expected, kinds_used


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_input_at_volume_every_row_once_with_its_status(s3, hostile_manifest, ray_cluster, tmp_path):
    manifest, root, expected, kinds_used = hostile_manifest
    assert len(kinds_used) >= 12 and sum(kinds_used.values()) == ROWS * BAD_SHARE
    fetch = {"local_roots": [str(root)], "max_bytes": hostile.LIMITS["fetch_max_bytes"],
             "storage_options": {"s3": s3.storage_options}}  # fmt: skip
    preprocess = {"max_num": 1, "multi_image_max_num": 2, "fetch": fetch,
                  "video": {"max_frame_pixels": hostile.LIMITS["video_max_frame_pixels"], "num_segments": 4}}  # fmt: skip
    out = tmp_path / "out"
    job = _job(str(manifest), str(out), input={"shard_rows": 100}, preprocess=preprocess,
               runtime={"preprocess_batch_size": 8, "engine_batch_size": 32},
               output={"rows_per_file": 500})  # fmt: skip
    rss_dir = tmp_path / "rss"
    rss_dir.mkdir()
    stages = {"prepare": reliability.measured_prepare(str(rss_dir)), "inference": stand_in.EchoInference}
    started = time.monotonic()
    summary = run_job(JobConfig.model_validate(job), stages=stages)
    elapsed = time.monotonic() - started

    assert summary.finished
    got = _local_rows(out)
    _assert_exactly_once(got, set(expected))
    for r in got:
        status, says = expected[(r["id"], r["task"])]
        assert r["status"] == status, (r["id"], r["error"])
        if status != Status.OK:
            assert says in r["error"], (r["id"], says, r["error"])
            assert hostile.SIGNATURE not in r["error"]
    peaks = reliability.peak_rss_mb(rss_dir)
    statuses = Counter(r["status"] for r in got)
    print(f"\n{len(got)} rows x tasks in {elapsed:.1f}s; {len(kinds_used)} bad kinds {dict(kinds_used)}; "
          f"statuses {dict(statuses)}; prepare workers' peak RSS {', '.join(f'{m:.0f} MB' for m in peaks.values())}")  # fmt: skip
    assert json.loads((out / "_SUCCESS").read_text())["status_counts"] == dict(statuses)
    assert peaks and max(peaks.values()) < PEAK_RSS_BUDGET_MB


def test_over_long_question_is_context_overflow_through_the_whole_job(tiny_model_dir, tmp_path, ray_cluster):
    """The one hostile kind only the engine can judge: the real InferenceStage, on the HF
    reference engine (the tiny checkpoint; vLLM's own check: tests/engines/vllm/test_engine.py)."""
    store = hostile.LocalStore(tmp_path / "media")
    image = store.put("a.jpg", hostile.jpeg(64, 48, 1))
    rows = [
        {"id": "fits", "image": image, "question": "What is this?"},
        {"id": "too-long", "image": image, "question": "Describe every pixel. " * 5000},
        {"id": "no-question", "image": image},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(_jsonl(rows))
    job = _job(
        str(manifest), str(tmp_path / "out"), preprocess={"max_num": 1, "fetch": {"local_roots": [str(store.root)]}}
    )
    job["model"] = {"path": str(tiny_model_dir), "dtype": "float32", "max_model_len": 1024}
    job["task"] = [{"name": "qa", "use_row_question": True, "sampling": {"max_tokens": 4}}]
    summary = run_job(on_hf_engine(JobConfig.model_validate(job)))
    assert summary.finished
    got = {r["id"]: r for r in _local_rows(tmp_path / "out")}
    assert {k: r["status"] for k, r in got.items()} == {
        "fits": Status.OK, "too-long": Status.CONTEXT_OVERFLOW, "no-question": Status.INVALID_ROW,
    }  # fmt: skip
    assert "max_model_len=1024" in got["too-long"]["error"]


# -- credentials --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_s3():
    """An S3 server of its own, with credentials found nowhere else, so a hit is a leak."""
    from tests.support.s3server import S3Server

    with S3Server(access_key=f"RLBKEY{uuid.uuid4().hex[:14].upper()}", secret_key=f"rlb-{uuid.uuid4().hex}") as server:
        yield server


def _signature(url: str) -> str:
    query = parse_qs(urlsplit(url).query)
    return (query.get("X-Amz-Signature") or query["Signature"])[0]


def test_no_credential_reaches_any_artifact(secret_s3, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Credentials in the environment and in every storage_options, presigned media URLs; a
    run, a run that fails (a wrong secret), `validate`, and `validate` of a signed manifest
    URL (refused). Every file under the output (parts with their error rows, ledger, _state,
    the run report, _SUCCESS), everything the runs and `validate` printed, and Ray's session
    logs are searched for every secret value, as is and URL-encoded: none may hold one."""
    s3, name = secret_s3, "secrets"
    s3.create_bucket(name)
    client, endpoint = s3.client(), s3.endpoint_url
    ok = s3.put_object(name, "media/a.jpg", hostile.jpeg(64, 48, 1))
    presign = lambda key: client.generate_presigned_url("get_object", Params={"Bucket": name, "Key": key},  # noqa: E731
                                                        ExpiresIn=3600)  # fmt: skip
    signed, signed_missing = presign("media/a.jpg"), presign("media/none.jpg")
    rows = [
        {"id": "s3-ok", "image": ok},
        {"id": "s3-missing", "image": f"s3://{name}/media/missing.jpg"},
        {"id": "signed-ok", "image": signed},
        {"id": "signed-missing", "image": signed_missing},
    ]
    s3.put_object(name, "m.jsonl", _jsonl(rows))
    secrets = [s3.access_key, s3.secret_key, _signature(signed), _signature(signed_missing)]
    client_kwargs = {"endpoint_url": endpoint, "region_name": s3.region}
    with_keys = {"key": s3.access_key, "secret": s3.secret_key, "client_kwargs": client_kwargs}
    job = _job(f"s3://{name}/m.jsonl", f"s3://{name}/out", storage=with_keys,
               preprocess={"max_num": 1, "fetch": {"storage_options": {"s3": with_keys}, "max_attempts": 2,
                                                   "backoff_initial_s": 0.05, "allowed_private_hosts": ["127.0.0.1"]}})  # fmt: skip
    job["output"]["storage_options"] = {"client_kwargs": client_kwargs}  # the environment's credentials
    job["model"]["path"] = str(tiny_model_dir)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job))
    wrong = f"rlb-wrong-{uuid.uuid4().hex}"
    secrets.append(wrong)
    bad_secret = tmp_path / "bad-secret.yaml"
    bad_secret.write_text(
        yaml.safe_dump({**job, "input": {**job["input"], "storage_options": {**with_keys, "secret": wrong}}})
    )
    signed_manifest, signed_url = tmp_path / "signed-manifest.yaml", presign("m.jsonl")
    signed_manifest.write_text(yaml.safe_dump({**job, "input": {**job["input"], "path": signed_url}}))
    secrets.append(_signature(signed_url))

    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
           "RAY_TMPDIR": str(ray_tmp)}  # fmt: skip
    runs = {  # the job in processes of their own: their whole output, and Ray's logs, are searched
        "run": ["-m", "tests.support.reliability", str(cfg_path), "--real-prepare"],
        "run-bad-secret": ["-m", "internvl_batch.cli", "run", str(bad_secret)],
    }
    codes, logs = {}, []
    try:
        for what, args in runs.items():
            out, err = tmp_path / f"{what}.out", tmp_path / f"{what}.err"
            with open(out, "wb") as o, open(err, "wb") as e:
                codes[what] = subprocess.run([sys.executable, *args], cwd=REPO, env=env, stdout=o, stderr=e,
                                             timeout=300).returncode  # fmt: skip
            logs += [out, err]
        from internvl_batch import cli

        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, env[key])
        for what, path in (("validate", cfg_path), ("validate-signed-manifest", signed_manifest)):
            capsys.readouterr()
            codes[what] = cli.main(["validate", str(path)])
            printed = capsys.readouterr()
            (tmp_path / f"{what}.out").write_text(printed.out)
            (tmp_path / f"{what}.err").write_text(printed.err)
            logs += [tmp_path / f"{what}.out", tmp_path / f"{what}.err"]
        text = {p.name: p.read_text(errors="replace") for p in logs}
        assert codes == {"run": 0, "run-bad-secret": 1, "validate": 0, "validate-signed-manifest": 2}, (codes, text)
        assert "SignatureDoesNotMatch" in text["run-bad-secret.err"] or "403" in text["run-bad-secret.err"]
        assert "config ok" in text["validate.out"] and "signed-missing: fetch_error: " in text["validate.out"]
        assert "carries credentials" in text["validate-signed-manifest.err"]
        assert re.search(r"Signature=REDACTED", text["validate-signed-manifest.err"])

        bucket = Bucket(s3, name)
        artifacts = tmp_path / "artifacts"
        for key in bucket.keys("out/"):
            (artifacts / key).parent.mkdir(parents=True, exist_ok=True)
            (artifacts / key).write_bytes(bucket.get(f"out/{key}"))
        got = {r["id"]: r for _, part in bucket.parts("out/") for r in part if r["task"] == "caption"}
        assert {k: r["status"] for k, r in got.items()} == {
            "s3-ok": "ok", "s3-missing": "fetch_error", "signed-ok": "ok", "signed-missing": "fetch_error",
        }  # fmt: skip
        assert (
            "REDACTED" in got["signed-missing"]["error"] and "/secrets/media/none.jpg" in got["signed-missing"]["error"]
        )
        session_logs = [p for p in ray_tmp.rglob("*") if p.is_file()]
        assert (artifacts / "_SUCCESS").exists() and any(p.suffix in (".log", ".out", ".err") for p in session_logs)
        # The search finds what it looks for: the manifest holds the presigned URLs.
        control = tmp_path / "manifest-copy.jsonl"
        control.write_bytes(bucket.get("m.jsonl"))
        assert {s for _, s in reliability.leaks([control], secrets)} == {s3.access_key, *secrets[2:4]}
        found = reliability.leaks([artifacts, *logs, ray_tmp], secrets)
        print(f"\nsearched {sum(1 for p in artifacts.rglob('*') if p.is_file())} output files, {len(logs)} process "
              f"logs and {len(session_logs)} Ray session files for {len(secrets)} secrets: {len(found)} hits")  # fmt: skip
        assert not found, found
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
