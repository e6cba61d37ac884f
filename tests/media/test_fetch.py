"""Fetcher: real S3 (SeaweedFS), local and memory:// reads; limits; which errors are retried and how they are counted.

HTTP reads: test_fetch_http.py; the address policy for http(s): test_ssrf.py."""

import errno
import pickle
import ssl
import uuid

import aiohttp
import fsspec
import multidict
import pytest
import yarl
from aiohttp.client_reqrep import ConnectionKey
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from fsspec.exceptions import FSTimeoutError
from fsspec.spec import AbstractFileSystem
from pydantic import ValidationError

from internvl_batch.media.errors import (
    FetchError,
    MediaNotFound,
    RetriableFetchError,
    TooLarge,
    URLNotAllowed,
)
from internvl_batch.media.fetch import FetchConfig, Fetcher, FetchStats


def _client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def _s3fs_style(exc: OSError, code: str, status: int) -> OSError:
    """An error as s3fs raises it: translated to an OSError, the botocore error as its cause."""
    exc.__cause__ = _client_error(code, status)
    return exc


def _http_status(status: int) -> aiohttp.ClientResponseError:
    url = yarl.URL("http://host/a.jpg")
    request = aiohttp.RequestInfo(
        url=url, method="GET", headers=multidict.CIMultiDictProxy(multidict.CIMultiDict()), real_url=url
    )
    return aiohttp.ClientResponseError(request_info=request, history=(), status=status, message="status")


# -- a scripted filesystem: each attempt's outcome is set by the test ---------------------------


class Script:
    """What a ScriptedFileSystem does: raise `failures` in turn from info(), then serve `data`."""

    def __init__(self, *failures: BaseException, data: bytes = b"payload", report_size: bool = True):
        self.failures = list(failures)
        self.data = data
        self.report_size = report_size
        self.attempts = 0
        self.reads: list[tuple[int | None, int | None]] = []

    def info(self, path: str) -> dict:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"name": path, "type": "file", "size": len(self.data) if self.report_size else None}

    def cat(self, start: int | None, end: int | None) -> bytes:
        self.reads.append((start, end))
        return self.data[start:end]


class ScriptedFileSystem(AbstractFileSystem):
    protocol = "scripted"
    cachable = False  # each Fetcher gets its own script

    def __init__(self, script: Script, **kwargs):
        super().__init__(**kwargs)
        self.script = script

    def info(self, path, **kwargs):
        return self.script.info(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        return self.script.cat(start, end)


fsspec.register_implementation("scripted", ScriptedFileSystem, clobber=True)


def scripted_fetcher(script: Script, **config) -> tuple[Fetcher, list[float]]:
    sleeps: list[float] = []
    cfg = FetchConfig(allowed_schemes=["scripted"], storage_options={"scripted": {"script": script}}, **config)
    return Fetcher(cfg, sleep=sleeps.append), sleeps


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(s3):
    s3.create_bucket("fetch-tests")
    return "fetch-tests"


@pytest.fixture
def s3_fetcher(s3, bucket):
    return Fetcher(FetchConfig(storage_options={"s3": s3.storage_options}, max_bytes=1000))


def test_s3_fetch_returns_the_object(s3, bucket, s3_fetcher):
    data = bytes(range(256)) * 3
    url = s3.put_object(bucket, "images/a.jpg", data)
    assert s3_fetcher.fetch(url) == data


def test_s3_object_of_exactly_max_bytes_is_fetched(s3, bucket, s3_fetcher):
    url = s3.put_object(bucket, "exact.bin", b"x" * 1000)
    assert s3_fetcher.fetch(url) == b"x" * 1000


def test_s3_empty_object_is_empty_bytes(s3, bucket, s3_fetcher):
    url = s3.put_object(bucket, "empty.jpg", b"")
    assert s3_fetcher.fetch(url) == b""


@pytest.mark.parametrize("url", ["s3://fetch-tests/no/such/key.jpg", "s3://no-such-bucket-xyz/a.jpg"])
def test_s3_missing_object_is_media_not_found(bucket, s3_fetcher, url):
    with pytest.raises(MediaNotFound, match=url) as info:
        s3_fetcher.fetch(url)
    assert info.value.status == "fetch_error" and not info.value.retriable


def test_s3_oversize_object_is_refused_before_reading(s3, bucket, s3_fetcher, monkeypatch):
    url = s3.put_object(bucket, "big.bin", b"x" * 1001)
    fs = s3_fetcher._filesystem("s3")
    reads = []
    monkeypatch.setattr(fs, "cat_file", lambda *args, **kwargs: reads.append(args))
    with pytest.raises(TooLarge) as info:
        s3_fetcher.fetch(url)
    assert str(info.value) == f"{url}: 1001 bytes exceeds fetch.max_bytes=1000"
    assert info.value.status == "too_large"
    assert reads == []


def test_s3_wrong_secret_is_not_retried(s3, bucket):
    url = s3.put_object(bucket, "secret.jpg", b"data")
    options = {**s3.storage_options, "secret": "wrong-secret"}
    sleeps: list[float] = []
    fetcher = Fetcher(FetchConfig(storage_options={"s3": options}), sleep=sleeps.append)
    with pytest.raises(FetchError, match="secret.jpg") as info:
        fetcher.fetch(url)
    assert type(info.value) is FetchError
    assert sleeps == []


def test_fetcher_pickles_without_its_filesystems(s3, bucket, s3_fetcher):
    url = s3.put_object(bucket, "pickle.jpg", b"pickled")
    assert s3_fetcher.fetch(url) == b"pickled"  # creates the live s3fs filesystem
    clone = pickle.loads(pickle.dumps(s3_fetcher))
    assert clone._filesystems == {}
    assert clone.fetch(url) == b"pickled"


# -- local and memory:// ------------------------------------------------------------------------


def test_local_path_and_file_url(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"local bytes")
    fetcher = Fetcher()
    assert fetcher.fetch(str(path)) == b"local bytes"
    assert fetcher.fetch(f"file://{path}") == b"local bytes"


def test_local_access_can_be_forbidden(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"local bytes")
    fetcher = Fetcher(FetchConfig(allow_local=False))
    for url in (str(path), f"file://{path}", "relative/a.jpg"):
        with pytest.raises(URLNotAllowed, match="fetch.allow_local=false"):
            fetcher.fetch(url)


def test_local_missing_file_and_directory(tmp_path):
    fetcher = Fetcher()
    with pytest.raises(MediaNotFound, match="nope.jpg"):
        fetcher.fetch(str(tmp_path / "nope.jpg"))
    with pytest.raises(MediaNotFound, match="is a directory"):
        fetcher.fetch(str(tmp_path))


def test_local_file_over_limit_is_too_large(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 11)
    with pytest.raises(TooLarge, match="11 bytes exceeds fetch.max_bytes=10"):
        Fetcher(FetchConfig(max_bytes=10)).fetch(str(path))


def test_memory_url():
    fs = fsspec.filesystem("memory")
    path = f"/fetch-tests-{uuid.uuid4().hex}/a.png"
    fs.pipe(path, b"in memory")
    try:
        assert Fetcher().fetch(f"memory://{path.lstrip('/')}") == b"in memory"
    finally:
        fs.rm(path)


# -- URL validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://host/a.jpg", "scheme 'ftp' is not in fetch.allowed_schemes"),
        ("data:image/png;base64,AAAA", "scheme 'data' is not in fetch.allowed_schemes"),
        ("", "empty"),
        ("s3://", "no object path"),
    ],
)
def test_refused_urls(url, message):
    with pytest.raises(URLNotAllowed, match=message) as info:
        Fetcher().fetch(url)
    assert info.value.status == "fetch_error"


def test_allowed_scheme_without_an_installed_filesystem():
    with pytest.raises(URLNotAllowed, match="no filesystem for scheme 'nosuchfs'"):
        Fetcher(FetchConfig(allowed_schemes=["nosuchfs"])).fetch("nosuchfs://a/b.jpg")


def test_scheme_is_case_insensitive():
    fetcher, _ = scripted_fetcher(Script(data=b"ok"))
    assert fetcher.fetch("SCRIPTED://bucket/a.jpg") == b"ok"


def test_config_rejects_typos_and_file_scheme():
    with pytest.raises(ValidationError, match="max_byte"):
        FetchConfig(max_byte=10)
    with pytest.raises(ValidationError, match="allow_local"):
        FetchConfig(allowed_schemes=["s3", "file"])


def test_timeouts_go_to_s3_and_http_clients_without_overriding_user_options():
    fetcher = Fetcher(FetchConfig(timeout_s=7, storage_options={"s3": {"config_kwargs": {"read_timeout": 99}}}))
    assert fetcher.filesystem_options("s3")["config_kwargs"] == {"connect_timeout": 7, "read_timeout": 99}
    timeout = fetcher.filesystem_options("https")["client_kwargs"]["timeout"]
    assert (timeout.sock_connect, timeout.sock_read, timeout.total) == (7, 7, None)
    assert Fetcher(FetchConfig(timeout_s=None)).filesystem_options("s3") == {}


# -- size cap when the size is unknown ------------------------------------------------------------


def test_unknown_size_read_is_capped_at_max_bytes_plus_one():
    script = Script(data=b"x" * 5000, report_size=False)
    fetcher, _ = scripted_fetcher(script, max_bytes=100)
    with pytest.raises(TooLarge, match="more than 100 bytes, exceeds fetch.max_bytes=100"):
        fetcher.fetch("scripted://bucket/big.bin")
    assert script.reads == [(0, 101)]


def test_unknown_size_within_limit_is_fetched():
    script = Script(data=b"x" * 100, report_size=False)
    fetcher, _ = scripted_fetcher(script, max_bytes=100)
    assert fetcher.fetch("scripted://bucket/ok.bin") == b"x" * 100


# -- retries --------------------------------------------------------------------------------------

RETRIABLE = {
    "connection reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "timeout": lambda: TimeoutError("timed out"),
    "fsspec timeout": lambda: FSTimeoutError(),
    "s3fs SlowDown": lambda: _s3fs_style(OSError(errno.EBUSY, "Please reduce your request rate."), "SlowDown", 503),
    "s3fs 500": lambda: _s3fs_style(OSError(errno.EIO, "We encountered an internal error"), "InternalError", 500),
    "s3fs RequestTimeout": lambda: _s3fs_style(TimeoutError("RequestTimeout"), "RequestTimeout", 400),
    "botocore ThrottlingException": lambda: _client_error("ThrottlingException", 400),
    "botocore 503": lambda: _client_error("ServiceUnavailable", 503),
    "botocore 429": lambda: _client_error("TooManyRequests", 429),
    "botocore connection": lambda: EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    "botocore read timeout": lambda: ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    "aiohttp disconnected": lambda: aiohttp.ServerDisconnectedError(),
    "aiohttp 503": lambda: _http_status(503),
    "fsspec http 503 as FileNotFoundError": lambda: _caused(FileNotFoundError("http://h/a.jpg"), _http_status(503)),
}


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize("make_error", RETRIABLE.values(), ids=RETRIABLE.keys())
def test_transient_errors_are_retried_with_backoff(make_error):
    script = Script(make_error(), make_error(), data=b"finally")
    fetcher, sleeps = scripted_fetcher(script, backoff_initial_s=0.5, backoff_max_s=8)
    assert fetcher.fetch("scripted://bucket/a.jpg") == b"finally"
    assert script.attempts == 3
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert fetcher.stats == FetchStats(fetches=1, transient_errors=2, retries=2, failures=0, exhausted=0)


NOT_RETRIED = {
    "permission": (lambda: PermissionError("Forbidden"), FetchError),
    "s3fs AccessDenied": (lambda: _s3fs_style(PermissionError("Access Denied"), "AccessDenied", 403), FetchError),
    "botocore InvalidRange": (lambda: _client_error("InvalidRange", 416), FetchError),
    "aiohttp 400": (lambda: _http_status(400), FetchError),
    "invalid argument": (lambda: OSError(errno.EINVAL, "Invalid argument"), FetchError),
    "unexpected": (lambda: ValueError("something odd"), FetchError),
    "missing": (lambda: FileNotFoundError("bucket/a.jpg"), MediaNotFound),
    "s3fs NoSuchKey": (lambda: _s3fs_style(FileNotFoundError("bucket/a.jpg"), "NoSuchKey", 404), MediaNotFound),
    "fsspec http 404": (lambda: _caused(FileNotFoundError("http://h/a.jpg"), _http_status(404)), MediaNotFound),
    # aiohttp ClientErrors that no retry fixes (ClientError as such is transient)
    "aiohttp invalid URL": (lambda: aiohttp.InvalidURL("http://[::1"), FetchError),
    "aiohttp bad redirect": (
        lambda: _caused(FileNotFoundError("http://h/a.jpg"), aiohttp.InvalidUrlRedirectClientError("http://[x", "bad")),
        FetchError,
    ),
    "aiohttp certificate": (lambda: _certificate_error(), FetchError),
}


def _certificate_error() -> aiohttp.ClientConnectorCertificateError:
    key = ConnectionKey("h", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorCertificateError(key, ssl.SSLCertVerificationError(1, "certificate verify failed"))


@pytest.mark.parametrize("make_error, expected", NOT_RETRIED.values(), ids=NOT_RETRIED.keys())
def test_other_errors_are_not_retried(make_error, expected):
    script = Script(make_error())
    fetcher, sleeps = scripted_fetcher(script)
    with pytest.raises(expected, match="scripted://bucket/a.jpg") as info:
        fetcher.fetch("scripted://bucket/a.jpg")
    assert type(info.value) is expected
    assert script.attempts == 1 and sleeps == []
    assert fetcher.stats == FetchStats(fetches=1, failures=1)


def test_exhausted_retries_give_a_final_fetch_error():
    script = Script(*(ConnectionResetError("reset") for _ in range(10)))
    fetcher, sleeps = scripted_fetcher(script, max_attempts=5, backoff_initial_s=1, backoff_max_s=2)
    with pytest.raises(FetchError) as info:
        fetcher.fetch("scripted://bucket/a.jpg")
    error = info.value
    assert type(error) is FetchError and not error.retriable and error.status == "fetch_error"
    assert "giving up after 5 attempts" in str(error) and "ConnectionResetError: reset" in str(error)
    assert isinstance(error.__cause__, ConnectionResetError)
    assert script.attempts == 5
    caps = [1, 2, 2, 2]  # doubling from backoff_initial_s, capped at backoff_max_s
    assert len(sleeps) == 4 and all(cap / 2 <= s <= cap for s, cap in zip(sleeps, caps))
    assert fetcher.stats == FetchStats(fetches=1, transient_errors=5, retries=4, failures=1, exhausted=1)


def test_single_attempt_config_never_sleeps():
    script = Script(ConnectionResetError("reset"))
    fetcher, sleeps = scripted_fetcher(script, max_attempts=1)
    with pytest.raises(FetchError, match="giving up after 1 attempts"):
        fetcher.fetch("scripted://bucket/a.jpg")
    assert sleeps == []


def test_retriable_error_class_is_marked_retriable():
    assert RetriableFetchError.retriable and RetriableFetchError.status == "fetch_error"
    assert not FetchError.retriable


def test_stats_count_every_fetch_and_add_up_across_workers(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"a")
    fetcher = Fetcher(FetchConfig(allow_local=True))
    fetcher.fetch(str(tmp_path / "a.jpg"))
    for url in (str(tmp_path / "nope.jpg"), "ftp://host/a.jpg", ""):
        with pytest.raises(FetchError):
            fetcher.fetch(url)
    assert fetcher.stats == FetchStats(fetches=4, failures=3)
    flaky, _ = scripted_fetcher(Script(TimeoutError("slow"), data=b"x"))
    flaky.fetch("scripted://bucket/a.jpg")
    total = fetcher.stats + flaky.stats
    assert total.as_dict() == {"fetches": 5, "transient_errors": 1, "retries": 1, "failures": 3, "exhausted": 0}
    # A Fetcher shipped to a worker keeps counting from where it was.
    assert pickle.loads(pickle.dumps(flaky)).stats == flaky.stats
