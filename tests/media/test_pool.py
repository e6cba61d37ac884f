"""FetchPool against real servers: fetches overlap, one connection pool per scheme, per-host
limits, a bounded number of bytes held, a dead or silent host given up fast."""

import queue
import threading
import time

import pytest

from internvl_batch.media.errors import FetchError
from internvl_batch.media.fetch import FetchConfig, Fetcher
from internvl_batch.media.pool import FetchPool

LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture(autouse=True)
def fresh(http_server):
    http_server.reset()


def pool(**config) -> FetchPool:
    return FetchPool(Fetcher(FetchConfig(**{"allowed_private_hosts": LOOPBACK, **config}), sleep=time.sleep))


def fetch_all(p: FetchPool, urls: list[str], hold_s: float = 0.0) -> dict[str, object]:
    """Every URL's outcome; each result is held `hold_s` (a slow decoder) before its bytes are released."""
    done: queue.Queue = queue.Queue()
    for url in urls:
        p.submit(url, done.put)
    out = {}
    for _ in urls:
        r = done.get(timeout=120)
        time.sleep(hold_s)
        r.release()
        out[r.url] = r.data if r.error is None else r.error
    return out


def test_fetches_overlap_and_reuse_connections(http_server):
    k, delay = 12, 0.4
    for i in range(k):
        http_server.files[f"/{i}.jpg"] = bytes([i]) * 1000
    http_server.delays["*"] = delay
    p = pool(concurrency=6, per_host=6)
    started = time.monotonic()
    got = fetch_all(p, [f"{http_server.url}/{i}.jpg" for i in range(k)])
    elapsed = time.monotonic() - started
    assert got == {f"{http_server.url}/{i}.jpg": bytes([i]) * 1000 for i in range(k)}
    assert elapsed < k * delay / 2, elapsed  # in series: 4.8 s; 6 at a time: ~0.8 s
    assert http_server.peak_active == 6 == p.peak_active
    # One session for the worker: 12 requests over at most 6 connections, kept alive.
    assert len(http_server.connections) <= 6
    assert p.fetcher.stats.fetches == k and p.fetcher.stats.failures == 0


def test_per_host_limit_holds_while_other_hosts_go_on(http_server, s3):
    s3.create_bucket("pool-hosts")
    s3_urls = [s3.put_object("pool-hosts", f"{i}.bin", b"s" * 100) for i in range(6)]
    for i in range(8):
        http_server.files[f"/{i}.jpg"] = b"h" * 100
    http_server.delays["*"] = 0.3
    p = pool(concurrency=8, per_host=2, storage_options={"s3": s3.storage_options})
    started = time.monotonic()
    got = fetch_all(p, [f"{http_server.url}/{i}.jpg" for i in range(8)] + s3_urls)
    assert all(isinstance(v, bytes) for v in got.values())
    assert http_server.peak_active == 2  # never more than per_host at the web host...
    assert p.peak_active > 2  # ...while the object store's fetches ran beside them
    assert time.monotonic() - started >= 4 * 0.3 * 0.9  # 8 requests, 2 at a time


def test_bytes_held_stay_under_the_bound(s3):
    size, n, bound = 300_000, 12, 1_000_000
    s3.create_bucket("pool-bytes")
    urls = [s3.put_object("pool-bytes", f"{i}.bin", bytes([i]) * size) for i in range(n)]
    p = pool(concurrency=8, max_bytes_in_flight=bound, storage_options={"s3": s3.storage_options})
    got = fetch_all(p, urls, hold_s=0.05)
    assert all(got[u] == bytes([i]) * size for i, u in enumerate(urls))
    # Three objects fit under the bound at once and no fourth: 8 threads could have held 2.4 MB.
    assert p.budget.peak == 3 * size
    assert p.budget.used == 0


def test_an_object_larger_than_the_bound_is_fetched_alone(s3):
    s3.create_bucket("pool-big")
    urls = [s3.put_object("pool-big", f"{i}.bin", b"b" * 500_000) for i in range(3)]
    p = pool(concurrency=4, max_bytes_in_flight=100_000, storage_options={"s3": s3.storage_options})
    got = fetch_all(p, urls, hold_s=0.05)
    assert all(v == b"b" * 500_000 for v in got.values())
    assert p.budget.peak == 500_000


def test_a_dead_host_is_given_up_fast_and_others_go_on(http_server):
    http_server.files["/ok.jpg"] = b"fine"
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused
    urls = [f"{dead}/{i}.jpg" for i in range(30)] + [f"{http_server.url}/ok.jpg"]
    # Without giving up: 30 rows x 4 attempts with 0.5 + 1 + 2 s of backoff = 105 s of waiting, 4 at a time.
    p = pool(concurrency=8, per_host=4, host_max_errors=3, max_attempts=4, backoff_initial_s=0.5)
    started = time.monotonic()
    got = fetch_all(p, urls)
    elapsed = time.monotonic() - started
    assert got.pop(f"{http_server.url}/ok.jpg") == b"fine"
    assert all(isinstance(e, FetchError) and e.status == "fetch_error" for e in got.values())
    given_up = [str(e) for e in got.values() if "given up" in str(e)]
    assert len(given_up) >= 26  # all but the few that were already in flight
    assert "host http://127.0.0.1:9 given up: 3 requests in a row could not reach it" in given_up[-1]
    assert "fetch.host_max_errors=3" in given_up[-1] and "ClientConnectorError" in given_up[-1]
    assert elapsed < 10, elapsed  # the first failures' backoff at most (0.5 s), not 105 s
    assert p.hosts.given_up == 1


def test_a_host_that_times_out_is_given_up(http_server):
    http_server.files["/slow.jpg"] = b"late"
    http_server.delays["/slow.jpg"] = 3.0  # past the 0.3 s read timeout
    urls = [f"{http_server.url}/slow.jpg?{i}" for i in range(12)]
    p = pool(concurrency=4, per_host=2, timeout_s=0.3, host_max_errors=2, max_attempts=3, backoff_initial_s=0.1)
    started = time.monotonic()
    got = fetch_all(p, urls)
    assert all("given up" in str(e) or "giving up after" in str(e) for e in got.values())
    assert sum("given up" in str(e) for e in got.values()) >= 10
    # Two timeouts (0.3 s each, side by side) give the host up; then nothing more is sent to it.
    assert time.monotonic() - started < 3.0
    assert len(http_server.requests) <= 4


def test_an_object_stores_endpoint_is_never_given_up(s3):
    """Its timeouts and throttling are the operator's to ride out with retries, not a web host's death."""
    dead = {**s3.storage_options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 1}}}  # fmt: skip
    p = pool(concurrency=8, host_max_errors=1, max_attempts=1, storage_options={"s3": dead})
    got = fetch_all(p, [f"s3://pool-dead/{i}.bin" for i in range(6)])
    assert all(isinstance(e, FetchError) and "given up" not in str(e) for e in got.values())
    assert p.hosts.given_up == 0


def test_a_given_up_host_is_probed_again_later():
    book = pool(host_max_errors=2).hosts
    book.give_up_s = 0.2
    refused = ConnectionRefusedError(111, "refused")
    book.failed("http://h", refused)
    assert book.refusal("http://h") is None  # one failure in a row: not yet
    book.failed("http://h", refused)
    assert "given up" in book.refusal("http://h")
    time.sleep(0.25)
    assert book.refusal("http://h") is None  # one probe may go...
    book.failed("http://h", refused)
    assert "given up" in book.refusal("http://h")  # ...and its failure gives the host up again at once
    time.sleep(0.25)
    assert book.refusal("http://h") is None
    book.answered("http://h")  # the probe got through: the count starts over
    book.failed("http://h", refused)
    assert book.refusal("http://h") is None


def test_answers_are_not_unreachability(http_server):
    http_server.files["/flaky.jpg"] = b"x"
    http_server.failures["/flaky.jpg"] = 10  # 503s: the host answers
    p = pool(host_max_errors=1, max_attempts=2, backoff_initial_s=0.01)
    got = fetch_all(p, [f"{http_server.url}/flaky.jpg"] * 3)
    assert all("giving up after 2 attempts" in str(e) for e in got.values())
    assert p.hosts.given_up == 0


def test_callbacks_from_many_threads_each_once(http_server):
    for i in range(40):
        http_server.files[f"/{i}.jpg"] = b"z"
    p = pool(concurrency=16)
    seen: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def on_done(r):
        with lock:
            seen.append(r.url)
            if len(seen) == 40:
                done.set()

    for i in range(40):
        p.submit(f"{http_server.url}/{i}.jpg", on_done)
    assert done.wait(60)
    assert sorted(seen) == sorted(f"{http_server.url}/{i}.jpg" for i in range(40))
