"""The job's own storage I/O under failures, without Ray: what is retried (transient errors
only, bounded, counted), what a read that fails mid-way yields (every record once, never
one skipped), and what a failed write leaves (the whole object or nothing)."""

from __future__ import annotations

import errno
import json

import pyarrow.parquet as pq
import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.output import OutputDir
from internvl_batch.job.readers import ManifestError, cut_shards, list_files, split_of, split_rows
from internvl_batch.storage import retry
from internvl_batch.storage.retry import RetryPolicy, StorageError
from tests.support.flakyfs import Fault, FlakyFS
from tests.support.manifests import manifest_file, record, write_jsonl
from tests.support.results import RUN1, result, table


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    """Backoff is real in the job; here it would only slow the suite."""
    sleeps = []
    monkeypatch.setattr(retry, "_sleep", sleeps.append)
    retry.drain()
    yield sleeps
    retry.drain()


def reset() -> OSError:
    return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def slow_down() -> OSError:
    import botocore.exceptions

    error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
    cause = botocore.exceptions.ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    # s3fs turns botocore errors into OSError subclasses, the original as the cause
    wrapped = OSError(errno.EIO, "Please reduce your request rate.")
    wrapped.__cause__ = cause
    return wrapped


def gone() -> OSError:
    return FileNotFoundError(errno.ENOENT, "gone")


def denied() -> OSError:
    return PermissionError(errno.EACCES, "Access Denied")


# -- call ------------------------------------------------------------------------------------


def test_transient_errors_are_retried_with_growing_jittered_backoff(no_waits):
    failures = [reset(), slow_down(), TimeoutError("read timed out")]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "done"

    assert retry.call("output_read", "x", flaky) == "done"
    assert retry.drain() == {
        "storage_transient_errors": 3, "storage_retries": 3, "storage_retries_output_read": 3,
    }  # fmt: skip
    first, second, third = no_waits
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0 and 1.0 <= third <= 2.0


@pytest.mark.parametrize("error", [denied, gone, lambda: ValueError("not storage")])
def test_other_errors_are_raised_at_once(error, no_waits):
    calls = []

    def failing():
        calls.append(1)
        raise error()

    with pytest.raises(type(error())):
        retry.call("output_write", "x", failing)
    assert calls == [1] and no_waits == [] and retry.drain() == {}


def test_giving_up_is_a_redacted_storage_error(no_waits):
    url = "https://store.example/out/part.parquet?X-Amz-Signature=5ec2e75ec2e75ec2e7"

    def always():
        raise ConnectionResetError(errno.ECONNRESET, f"reset while writing {url}")

    with pytest.raises(StorageError) as info:
        retry.call("output_write", url, always, RetryPolicy(max_attempts=3))
    text = str(info.value)
    assert "output_write of https://store.example/out/part.parquet" in text and "giving up after 3 attempts" in text
    assert "5ec2e7" not in text and info.value.__cause__ is None  # the cause quotes the URL
    assert len(no_waits) == 2
    assert retry.drain() == {
        "storage_transient_errors": 3, "storage_retries": 2, "storage_retries_output_write": 2, "storage_exhausted": 1,
    }  # fmt: skip


def test_a_missing_file_wrapping_a_transient_error_is_retried_not_missing():
    """fsspec's HTTP filesystem turns a 503 into FileNotFoundError: that is no "missing"."""
    errors = [slow_down()]

    def read():
        if errors:
            wrapper = FileNotFoundError("https://store.example/x")
            wrapper.__cause__ = errors.pop().__cause__
            raise wrapper
        return b"{}"

    assert retry.call("output_read", "x", read) == b"{}"
    assert retry.drain()["storage_retries"] == 1


# -- split reads -----------------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [record(i) for i in range(30)])


def read_split(fs, path, shard_rows=30, index=0):
    """Planned on the real filesystem, read through `fs`."""
    real, file = manifest_file(path)
    shards = cut_shards(real, file, shard_rows)
    split = split_of(file, [shards[index]])
    return [(n, row.id) for n, _, row in split_rows(fs, split, InputConfig(path=str(path)))]


@pytest.mark.parametrize("after", [0, 150, 700, 1500])
@pytest.mark.parametrize("times", [1, 3])
def test_a_read_cut_mid_way_goes_on_after_the_last_record(manifest, after, times):
    fs, _ = manifest_file(manifest.path)
    clean = read_split(fs, manifest.path)
    flaky = FlakyFS(fs, [Fault("open", reset, times=times, after=after)])
    assert read_split(flaky, manifest.path) == clean  # every record, once, in order
    assert flaky.injected["open"] == times
    assert retry.drain()["storage_retries_manifest_read"] == times


def test_a_seekable_shard_resumes_inside_its_byte_range(manifest):
    fs, _ = manifest_file(manifest.path)
    clean = read_split(fs, manifest.path, shard_rows=7, index=2)
    flaky = FlakyFS(fs, [Fault("open", reset, times=2, after=manifest.path.stat().st_size // 2)])
    assert read_split(flaky, manifest.path, shard_rows=7, index=2) == clean == [(n, f"r{n:03d}") for n in range(14, 21)]


def test_many_spread_out_failures_pass_one_that_stays_does_not(manifest):
    fs, _ = manifest_file(manifest.path)
    # 8 cuts at growing offsets: each retry gets further, so the budget (6) starts over each time
    spread = FlakyFS(fs, [Fault("open", reset, times=1, after=100 * k) for k in range(1, 9)])
    assert len(read_split(spread, manifest.path)) == 30
    assert retry.drain()["storage_retries_manifest_read"] == 8

    stuck = FlakyFS(fs, [Fault("open", reset, times=-1, after=300)])
    got = []
    with pytest.raises(StorageError, match=r"manifest_read of .*m.jsonl \(records 0-29\): giving up after 6"):
        for n, _, _ in split_rows(stuck, split_of(*_file_and_shard(manifest.path)), InputConfig(path="x")):
            got.append(n)
    assert got == list(range(len(got))) and 0 < len(got) < 30  # the rows before it, once each


def _file_and_shard(path):
    fs, file = manifest_file(path)
    return file, cut_shards(fs, file, 30)


def test_a_permanent_error_mid_way_is_raised_without_skipping(manifest):
    fs, _ = manifest_file(manifest.path)
    flaky = FlakyFS(fs, [Fault("open", denied, times=1, after=500)])
    got = []
    with pytest.raises(PermissionError):
        for n, _, _ in split_rows(flaky, split_of(*_file_and_shard(manifest.path)), InputConfig(path="x")):
            got.append(n)
    assert got == list(range(len(got))) and len(got) < 30
    assert retry.drain() == {}


def test_a_file_shorter_than_its_plan_fails_loudly(manifest):
    """Rows the plan counted must come out or fail the job, never vanish."""
    file, [shard] = _file_and_shard(manifest.path)
    write_jsonl(manifest.path, [record(i) for i in range(20)])  # cut after it was planned
    fs, _ = manifest_file(manifest.path)
    with pytest.raises(StorageError, match=r"the read ended after record 19, the plan has records 0-29"):
        list(split_rows(fs, split_of(file, [shard]), InputConfig(path="x")))


def test_planning_retries_and_sees_a_cut_read(manifest):
    fs, file = manifest_file(manifest.path)
    clean = cut_shards(fs, file, 7)
    assert cut_shards(FlakyFS(fs, [Fault("open", slow_down, times=2, after=400)]), file, 7) == clean
    assert retry.drain()["storage_retries_manifest_plan"] == 2


def test_a_plan_that_read_less_than_the_listing_said_is_not_trusted(manifest):
    """Planning that stops early would leave the file's last rows out of the job unseen."""
    from dataclasses import replace

    fs, file = manifest_file(manifest.path)
    bigger = replace(file, fingerprint=f"{file.size + 100}:{file.fingerprint.split(':', 1)[1]}")
    with pytest.raises(StorageError, match=rf"read {file.size} of its {file.size + 100} bytes"):
        cut_shards(fs, bigger, 7)


# -- listing ---------------------------------------------------------------------------------


def test_listing_retries_and_tells_missing_from_unreachable(manifest, monkeypatch):
    import fsspec.implementations.local as local

    calls = []
    real = local.LocalFileSystem.info

    def info(self, path, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise reset()
        return real(self, path, **kw)

    monkeypatch.setattr(local.LocalFileSystem, "info", info)
    _, files = list_files(InputConfig(path=str(manifest.path)))
    assert [f.path for f in files] == [str(manifest.path)]
    assert retry.drain()["storage_retries_manifest_list"] == 2
    with pytest.raises(ManifestError, match="does not exist"):
        list_files(InputConfig(path=str(manifest.path) + ".nope"))


# -- the output ------------------------------------------------------------------------------


def rows(n):
    return table([result("s-000000", r, "caption", RUN1) for r in range(n)])


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("after_call", [False, True])
def test_a_retried_write_leaves_one_whole_object(tmp_path, where, after_call):
    """after_call: the store completed the write but the caller saw an error (a timeout):
    the retry writes the same name again, never a second part."""
    import uuid

    out = OutputDir(str(tmp_path / "out") if where == "local" else f"memory://retry-{uuid.uuid4().hex}")
    out.fs = FlakyFS(out.fs, [Fault("pipe_file", slow_down, times=2, after_call=after_call)])
    out.write_atomic("part-s-000000-r-0000.parquet", rows(5))
    out.write_json("_ledger/s-000000.json", {"rows": 5})
    listing = sorted(p[len(out.root) + 1 :] for p in out.fs.find(out.root))
    assert listing == ["_ledger/s-000000.json", "part-s-000000-r-0000.parquet"]  # no tmp, no second copy
    assert pq.read_table(out.fs.open(out.path("part-s-000000-r-0000.parquet"), "rb")).num_rows == 5
    assert retry.drain()["storage_retries_output_write"] == 2


def test_a_write_that_fails_while_its_bytes_are_made_publishes_nothing(tmp_path, monkeypatch):
    """fsspec's file objects upload what they hold when closed, even when the `with` body
    raised: the bytes are made first, so nothing is opened for a write that cannot finish."""
    import internvl_batch.job.output as output

    out = OutputDir(f"memory://retry-{tmp_path.name}")

    def half_then_fail(table, where, **kw):
        where.write(b"PAR1 half a part")
        raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(output.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="no space"):
        out.write_atomic("part-s-000000-r-0000.parquet", rows(3))
    assert out.part_files() == []


def test_a_write_that_keeps_failing_leaves_nothing(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.fs = FlakyFS(out.fs, [Fault("pipe_file", reset, times=-1)])
    with pytest.raises(StorageError, match="giving up after 6 attempts"):
        out.write_atomic("part-s-000000-r-0000.parquet", rows(3))
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_reads_listings_and_removals_are_retried(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.write_json("_state/a.json", {"b": 1})
    out.write_atomic("part-s-000000-r-0000.parquet", rows(2))
    out.fs = FlakyFS(
        out.fs,
        [Fault(m, reset, times=1) for m in ("cat_file", "glob", "rm")] + [Fault("open", reset, times=1, after=10)],
    )
    assert out.read_json("_state/a.json") == {"b": 1}
    assert out.read_json("_state/none.json") is None  # missing: at once, no retry
    assert out.shard_keys("s-000000").num_rows == 2  # one glob, one cut read
    out.remove([out.path("_state/a.json"), out.path("_state/none.json")])
    assert out.read_json("_state/a.json") is None
    counts = retry.drain()
    assert {k: counts[f"storage_retries_{k}"] for k in ("output_read", "output_list", "output_remove")} == {
        "output_read": 2, "output_list": 1, "output_remove": 1,
    }  # fmt: skip


def test_json_state_round_trips_through_retries(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.fs = FlakyFS(out.fs, [Fault("pipe_file", reset, times=1), Fault("cat_file", reset, times=1)])
    out.write_json("_state/job.json", {"shard_rows": 4})
    assert out.read_json("_state/job.json") == {"shard_rows": 4}
    assert json.loads((tmp_path / "out/_state/job.json").read_text()) == {"shard_rows": 4}
    assert not list((tmp_path / "out/_state").glob(".*"))


def test_an_sdk_handler_that_breaks_on_a_timeout_is_still_a_timeout():
    """s3fs's S3File._fetch_range reads `ex.args[0]` of the read timeout it caught, which has
    no args: the IndexError that comes out has the timeout as its context."""
    from fsspec.exceptions import FSTimeoutError

    def s3fs_fetch_range():
        try:
            raise FSTimeoutError
        except OSError as ex:
            if ex.args[0] == errno.EINVAL:
                raise

    attempts = []

    def read():
        attempts.append(1)
        if len(attempts) == 1:
            s3fs_fetch_range()
        return b"ok"

    assert retry.call("manifest_read", "x", read) == b"ok" and len(attempts) == 2
    # ... but not an error of ours raised while handling one, nor one given up on
    try:
        try:
            raise TimeoutError
        except TimeoutError:
            raise ValueError("a bug") from None
    except ValueError as e:
        assert retry.kind_of(e) is None
    assert retry.kind_of(StorageError("gave up")) == "fatal"
