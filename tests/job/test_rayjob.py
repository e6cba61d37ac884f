"""Unattended nights through the real entrypoint (`internvl-rayjob`, run by /bin/sh as the head does,
with a stand-in `internvl-batch` that records its calls) against the real S3 server: the date comes
from the schedule, a done night exits 0 at once, the output lease refuses a second writer, a catch-up
processes each missed night once, oldest first (or is refused), and a late manifest is waited for."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pytest
import yaml

from internvl_batch.job.lease import Lease
from internvl_batch.job.nights import SCHEDULE_ANNOTATION
from tests.k8s.entrypoint_run import entrypoint_line, run_entrypoint

BUCKET = "nights"
TODAY = dt.datetime.now(dt.UTC).date()


@pytest.fixture(scope="module")
def store(s3):
    options = s3.create_bucket(BUCKET)
    env = {
        "AWS_ACCESS_KEY_ID": options["key"],
        "AWS_SECRET_ACCESS_KEY": options["secret"],
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_DEFAULT_REGION": s3.region,
    }
    return fsspec.filesystem("s3", **options), env


@pytest.fixture
def nightly(store, tmp_path, request):
    """(fs, env, config path, prefix): a nightly job config on S3, its own prefix per test."""
    fs, env = store
    prefix = f"{BUCKET}/{request.node.name[:40]}"
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"path": "s3://x/unused/"},
                "model": {"path": "unused-model"},
                "task": [{"name": "caption", "preset": "short_caption"}],
                "output": {"path": "s3://x/unused"},
            }
        )  # fmt: skip
    )
    return fs, env, config, prefix


def _line(config, prefix: str, *when: str, lease: bool = True) -> str:
    extra = ["--lease", f"s3://{prefix}/captions/_lease.json"] if lease else []
    return entrypoint_line(
        *when, *extra, str(config),
        "--set", f"input.path=s3://{prefix}/manifests/{{night}}/",
        "--set", f"output.path=s3://{prefix}/captions/{{night}}",
    )  # fmt: skip


def _manifest(fs, prefix: str, night: dt.date) -> None:
    fs.pipe_file(f"{prefix}/manifests/{night}/part-0.jsonl", b'{"id": "a", "image": "s3://m/a.jpg"}\n')


def _at(days_ago: int) -> str:
    """A RayCronJob tick (00:15 UTC) `days_ago` days before today, as KubeRay writes it."""
    return f"{TODAY - dt.timedelta(days=days_ago)}T00:15:00Z"


def _day(days_ago: int) -> dt.date:
    return TODAY - dt.timedelta(days=days_ago)


def test_the_night_comes_from_the_scheduled_time_not_the_clock(nightly, tmp_path):
    fs, env, config, prefix = nightly
    _manifest(fs, prefix, _day(3))
    # Scheduled 2 days ago (the head started late, or it is v1.7's one-RayJob-per-missed-tick):
    # its night is 3 days ago, whatever the clock says now.
    ran = run_entrypoint(
        _line(config, prefix, "--days-before-schedule", "1", "--catch-up", "0"),
        tmp_path, extra_env={**env, "INTERNVL_SCHEDULED_TIME": _at(2)},
    )  # fmt: skip
    assert ran.code == 2 and ran.calls == [], "catch-up 0: a 2-day-old tick is refused"
    assert f"rerun the nights {_day(3)} .. {_day(2)}" in ran.stderr

    ran = run_entrypoint(
        _line(config, prefix, "--days-before-schedule", "1", "--catch-up", "0"),
        tmp_path, extra_env={**env, "INTERNVL_SCHEDULED_TIME": _at(0)},
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert [c[0] for c in ran.calls] == ["validate", "run"]
    assert ran.calls[1][3:] == [f"input.path=s3://{prefix}/manifests/{_day(1)}/", "--set", f"output.path=s3://{prefix}/captions/{_day(1)}"]  # fmt: skip
    assert f"night {_day(1)} (UTC)" in ran.stdout


def test_the_scheduled_time_is_read_from_the_rayclusters_annotation(nightly, tmp_path):
    """As on KubeRay: RAY_CLUSTER_NAME/NAMESPACE set by the operator, the RayCluster read from the API server
    (here a local stand-in serving what KubeRay writes), bearer token from the service account."""
    fs, env, config, prefix = nightly
    seen: list[tuple[str, str | None]] = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            body = {"kind": "RayCluster", "metadata": {"name": "nightly-abc-x1", "annotations": {SCHEDULE_ANNOTATION: _at(0)}}}  # fmt: skip
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kube = {"RAY_CLUSTER_NAME": "nightly-abc-x1", "RAY_CLUSTER_NAMESPACE": "batch",
                "INTERNVL_KUBE_API": f"http://127.0.0.1:{server.server_port}"}  # fmt: skip
        ran = run_entrypoint(_line(config, prefix, "--days-before-schedule", "1", "--catch-up", "0"), tmp_path, extra_env={**env, **kube})  # fmt: skip
    finally:
        server.shutdown()
    assert ran.code == 0, ran.stderr
    assert seen and seen[0][0] == "/apis/ray.io/v1/namespaces/batch/rayclusters/nightly-abc-x1"
    assert ran.calls[1][-1] == f"output.path=s3://{prefix}/captions/{_day(1)}"
    lease = json.loads(fs.cat_file(f"{prefix}/captions/_lease.json"))
    assert lease["holder"] == "raycluster/batch/nightly-abc-x1" and lease["released"]


def test_a_done_night_exits_0_at_once(nightly, tmp_path):
    fs, env, config, prefix = nightly
    fs.pipe_file(f"{prefix}/captions/{_day(1)}/_SUCCESS", b"{}")
    start = time.monotonic()
    ran = run_entrypoint(_line(config, prefix, "--days-ago", "1"), tmp_path, extra_env=env)
    assert (ran.code, ran.calls) == (0, []), ran.stderr
    assert "done already" in ran.stdout and time.monotonic() - start < 15
    assert not fs.exists(f"{prefix}/captions/_lease.json"), "a done night takes no lease"


def test_the_lease_refuses_a_second_writer_before_anything_runs(nightly, tmp_path):
    fs, env, config, prefix = nightly
    url = f"s3://{prefix}/captions/_lease.json"
    other = Lease(url, ttl_s=600, holder="raycluster/batch/manual-rerun", storage_options=fs.storage_options)
    other.covers = ["2020-01-01"]  # a rerun of another night holds this schedule's lease
    other.acquire()
    ran = run_entrypoint(_line(config, prefix, "--days-ago", "1"), tmp_path, extra_env=env)
    assert (ran.code, ran.calls) == (1, []), "no validate, no run: no GPU pod"
    assert "held by 'raycluster/batch/manual-rerun'" in ran.stderr

    other.covers = [str(_day(1))]
    other.acquire()  # the holder re-enters, now covering this night
    ran = run_entrypoint(_line(config, prefix, "--days-ago", "1"), tmp_path, extra_env=env)
    assert (ran.code, ran.calls) == (0, []), "the holder processes this night: nothing to do"
    other.release()
    ran = run_entrypoint(_line(config, prefix, "--days-ago", "1"), tmp_path, extra_env=env)
    assert ran.code == 0 and [c[0] for c in ran.calls] == ["validate", "run"]


def test_an_ad_hoc_job_leases_its_output_path(nightly, tmp_path):
    fs, env, config, prefix = nightly
    line = entrypoint_line(str(config), "--set", f"output.path=s3://{prefix}/labels/run-1")
    Lease(f"s3://{prefix}/labels/run-1/_lease.json", holder="another-job", storage_options=fs.storage_options).acquire()
    ran = run_entrypoint(line, tmp_path, extra_env=env)
    assert (ran.code, ran.calls) == (1, [])


def test_a_catch_up_runs_each_missed_night_once_oldest_first(nightly, tmp_path):
    """After an outage: the RayJob of the oldest missed tick (v1.6.2 creates only that one) does every
    night not done yet, oldest first; a RayJob of a later tick (v1.7 makes one per tick) then has nothing
    to do; a night with no manifest is not a missed night."""
    fs, env, config, prefix = nightly
    for d in (4, 3, 2, 1):
        _manifest(fs, prefix, _day(d))
    fs.rm(f"{prefix}/manifests/{_day(5)}", recursive=True) if fs.exists(f"{prefix}/manifests/{_day(5)}") else None
    fs.pipe_file(f"{prefix}/captions/{_day(3)}/_SUCCESS", b"{}")  # done before the outage

    ran = run_entrypoint(
        _line(config, prefix, "--days-before-schedule", "1", "--catch-up", "4"),
        tmp_path, extra_env={**env, "INTERNVL_SCHEDULED_TIME": _at(3)},
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    runs = [c[-1].rsplit("/", 1)[-1] for c in ran.calls if c[0] == "run"]
    assert runs == [str(_day(4)), str(_day(2)), str(_day(1))], "each missed night once, oldest first"
    assert [c[0] for c in ran.calls] == ["validate", "run"] * 3
    assert f"no manifest at s3://{prefix}/manifests/{_day(5)}/" in ran.stdout

    for d in (4, 2, 1):  # what the runs wrote
        fs.pipe_file(f"{prefix}/captions/{_day(d)}/_SUCCESS", b"{}")
    later = run_entrypoint(
        _line(config, prefix, "--days-before-schedule", "1", "--catch-up", "4"),
        tmp_path, extra_env={**env, "INTERNVL_SCHEDULED_TIME": _at(1)},
    )  # fmt: skip
    assert (later.code, later.calls) == (0, [])


def test_a_late_manifest_is_waited_for_then_missing_fails(nightly, tmp_path):
    fs, env, config, prefix = nightly
    lease = f"{prefix}/captions/_lease.json"

    def upstream_is_late() -> None:  # the manifest lands 3 s after the job took its lease (and began to wait)
        deadline = time.monotonic() + 60
        while not fs.exists(lease) and time.monotonic() < deadline:
            fs.invalidate_cache()
            time.sleep(0.2)
        time.sleep(3)
        _manifest(fs, prefix, _day(1))

    threading.Thread(target=upstream_is_late, daemon=True).start()
    ran = run_entrypoint(_line(config, prefix, "--days-ago", "1", "--manifest-wait", "60"), tmp_path, extra_env=env)
    assert ran.code == 0 and [c[0] for c in ran.calls] == ["validate", "run"], ran.stderr
    assert "yet; looking again" in ran.stdout

    start = time.monotonic()
    ran = run_entrypoint(
        _line(config, prefix, "--days-ago", "2", "--manifest-wait", "2"), tmp_path, {}, {"validate": "2"}, env
    )
    assert ran.code == 2 and [c[0] for c in ran.calls] == ["validate"], "bounded: validate then reports it"
    assert 2 <= time.monotonic() - start < 20
