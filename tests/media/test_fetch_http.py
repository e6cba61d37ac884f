"""Fetcher over HTTP against a real local server: one capped GET per attempt, retries, hostile responses."""

import pytest

from internvl_batch.media.errors import MediaNotFound, TooLarge
from internvl_batch.media.fetch import FetchConfig, Fetcher, FetchStats
from tests.media.httpserver import ENDLESS_CAP, GZIP_BOMB_SIZE

# The server listens on loopback, which the address policy refuses unless allow-listed (test_ssrf.py).
LOOPBACK = ["127.0.0.0/8"]


def http_fetcher(**config) -> tuple[Fetcher, list[float]]:
    sleeps: list[float] = []
    config = {"allowed_private_hosts": LOOPBACK, **config}
    return Fetcher(FetchConfig(**config), sleep=sleeps.append), sleeps


@pytest.fixture(autouse=True)
def fresh(http_server):
    http_server.reset()


def test_fetch_missing_and_flaky(http_server):
    http_server.files["/a.jpg"] = b"served over http"
    fetcher, sleeps = http_fetcher()
    assert fetcher.fetch(f"{http_server.url}/a.jpg") == b"served over http"
    with pytest.raises(MediaNotFound):
        fetcher.fetch(f"{http_server.url}/missing.jpg")
    assert sleeps == []
    http_server.failures["/a.jpg"] = 2
    assert fetcher.fetch(f"{http_server.url}/a.jpg") == b"served over http"
    assert len(sleeps) == 2
    assert fetcher.stats == FetchStats(fetches=3, transient_errors=2, retries=2, failures=1)


def test_one_get_per_attempt_asking_for_identity_encoding(http_server):
    http_server.files["/b.jpg"] = b"x" * 1000
    fetcher, _ = http_fetcher()
    assert fetcher.fetch(f"{http_server.url}/b.jpg") == b"x" * 1000
    assert [(method, path) for method, path, _ in http_server.requests] == [("GET", "/b.jpg")]
    assert http_server.requests[0][2]["Accept-Encoding"] == "identity"


def test_declared_length_over_the_limit_is_refused_without_reading(http_server):
    fetcher, _ = http_fetcher(max_bytes=1000)
    url = f"{http_server.url}/claims-large"
    with pytest.raises(TooLarge, match=f"{url}: 10485760 bytes exceeds fetch.max_bytes=1000"):
        fetcher.fetch(url)


def test_endless_response_ignoring_range_is_cut_off_at_the_limit(http_server):
    # No length, no end: fsspec's cat_file would read all of it into memory.
    limit = 1024**2
    fetcher, _ = http_fetcher(max_bytes=limit)
    url = f"{http_server.url}/endless"
    with pytest.raises(TooLarge, match=f"{url}: more than {limit} bytes"):
        fetcher.fetch(url)
    # What the server got out before the client left: the limit plus what socket buffers held.
    assert http_server.sent["/endless"] < 32 * limit < ENDLESS_CAP


def test_compressed_response_is_capped_after_decompression(http_server):
    # The server answers gzip although identity was asked: a 64 KiB body inflating to 64 MiB.
    limit = 1024**2
    fetcher, _ = http_fetcher(max_bytes=limit)
    url = f"{http_server.url}/gzip-bomb"
    with pytest.raises(TooLarge, match=f"more than {limit} bytes"):
        fetcher.fetch(url)
    assert http_server.gzip_bomb().__len__() < limit < GZIP_BOMB_SIZE
