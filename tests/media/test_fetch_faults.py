"""The Fetcher against the real S3 server behind a fault-injecting proxy: every byte right or a
fetch_error after bounded retries, the proxy's count of faults equal to the Fetcher's count of
transient errors, stalls cut by fetch.timeout_s."""

import contextlib
import random
import time

import pytest

from internvl_batch.media.errors import FetchError
from internvl_batch.media.fetch import FetchConfig, Fetcher, FetchStats
from tests.support.faultproxy import KINDS, FaultProxy, Faults

BUCKET = "fault-tests"
TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def objects(s3):
    """60 objects of 1-40 KiB under media/, each with its own bytes, and a few under other/."""
    s3.create_bucket(BUCKET)
    rng = random.Random(0)
    stored = {}
    for i in range(60):
        data = rng.randbytes(rng.randint(1024, 40 * 1024))
        stored[s3.put_object(BUCKET, f"media/{i:03d}.jpg", data)] = data
    for i in range(5):
        stored[s3.put_object(BUCKET, f"other/{i}.jpg", b"other %d" % i)] = b"other %d" % i
    return stored


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint_url, seed=7) as proxy:
        yield proxy


def fetcher_via(proxy, s3, **config) -> Fetcher:
    """A Fetcher whose S3 traffic goes through the proxy, with the SDK's own retries off.

    botocore and s3fs retry inside one attempt, invisibly to Fetcher.stats; with them off,
    every injected fault is exactly one transient error the Fetcher sees."""
    options = proxy.s3_options(s3.storage_options)
    options["config_kwargs"] = {"retries": {"total_max_attempts": 1}}
    options["skip_instance_cache"] = True
    defaults = {"timeout_s": TIMEOUT_S, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_attempts": 4}
    fetcher = Fetcher(FetchConfig(storage_options={"s3": options}, **{**defaults, **config}))
    fetcher._filesystem("s3").retries = 1  # s3fs's own retry loop (a class attribute, no option)
    return fetcher


def test_five_percent_faults_on_media_reads(s3, objects, proxy):
    share = 0.05 / len(KINDS)
    proxy.set_faults(
        f"/{BUCKET}/media/", Faults(error_500=share, slow_down_503=share, reset=share, stall=share, stall_s=5)
    )
    fetcher = fetcher_via(proxy, s3)
    started = time.monotonic()
    failed = []
    for url, data in objects.items():
        try:
            assert fetcher.fetch(url) == data, url
        except FetchError as exc:
            assert "giving up after 4 attempts" in str(exc)
            failed.append(url)
    elapsed = time.monotonic() - started

    injected = proxy.injected
    # The seed gives every kind at least once; the test would prove little otherwise.
    assert all(proxy.injected_total(kind) for kind in KINDS), injected
    assert fetcher.stats.transient_errors == proxy.injected_total()
    assert fetcher.stats.retries == fetcher.stats.transient_errors - fetcher.stats.exhausted
    assert fetcher.stats.failures == fetcher.stats.exhausted == len(failed)
    assert fetcher.stats.fetches == len(objects)
    # Only media reads were faulted: HEAD (size) and GET (bytes) of media/ objects.
    faulted_paths = {target for _, target, fault in proxy.log if fault}
    assert all(p.startswith(f"/{BUCKET}/media/") for p in faulted_paths)
    assert {t for _, t in injected} <= {"HEAD", "GET"}
    # Each stall cost one timeout, not the 5 s the proxy would have waited.
    assert elapsed < 5 + proxy.injected_total("stall") * (TIMEOUT_S + 1)
    print(f"\ninjected: {dict(injected)}; fetcher: {fetcher.stats.as_dict()}; {elapsed:.1f} s")


def test_a_stall_is_cut_by_the_timeout(s3, objects, proxy):
    proxy.set_faults(f"/{BUCKET}/media/", Faults(stall=1.0, stall_s=10))
    fetcher = fetcher_via(proxy, s3, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(FetchError, match="giving up after 2 attempts") as info:
        fetcher.fetch(f"s3://{BUCKET}/media/000.jpg")
    elapsed = time.monotonic() - started
    # Uncut, the two stalls would take 20 s; the slack is for a loaded CI machine (3.01 s seen).
    assert elapsed < 2 * TIMEOUT_S + 5 < 10
    assert "Timeout" in str(info.value) or "timed out" in str(info.value)
    assert proxy.injected == {("stall", "HEAD"): 2}
    assert fetcher.stats == FetchStats(fetches=1, transient_errors=2, retries=1, failures=1, exhausted=1)


def test_persistent_slow_down_gives_a_fetch_error_after_bounded_retries(s3, objects, proxy):
    proxy.set_faults(f"/{BUCKET}/media/", Faults(slow_down_503=1.0))
    fetcher = fetcher_via(proxy, s3, max_attempts=3)
    with pytest.raises(FetchError, match="giving up after 3 attempts") as info:
        fetcher.fetch(f"s3://{BUCKET}/media/001.jpg")
    assert info.value.status == "fetch_error"
    assert proxy.injected == {("slow_down_503", "HEAD"): 3}
    assert fetcher.stats.transient_errors == 3
    # Other prefixes are untouched.
    assert fetcher.fetch(f"s3://{BUCKET}/other/0.jpg") == b"other 0"


@pytest.mark.parametrize("kind, code", [("slow_down_503", "SlowDown"), ("error_500", "InternalError")])
def test_s3_error_bodies_on_reads_are_parsed_and_retried(s3, objects, proxy, kind, code):
    # A HEAD answer has no body; on a GET botocore reads the S3 error code from the XML.
    proxy.set_faults(f"/{BUCKET}/media/", Faults(**{kind: 1.0}, request_types=frozenset({"GET"})))
    fetcher = fetcher_via(proxy, s3, max_attempts=2)
    with pytest.raises(FetchError, match="giving up after 2 attempts") as info:
        fetcher.fetch(f"s3://{BUCKET}/media/003.jpg")
    assert code in str(info.value)
    assert proxy.injected == {(kind, "GET"): 2} and fetcher.stats.transient_errors == 2


def test_a_reset_mid_body_is_retried(s3, objects, proxy):
    proxy.set_faults(f"/{BUCKET}/media/", Faults(reset=1.0, request_types=frozenset({"GET"})))
    fetcher = fetcher_via(proxy, s3, max_attempts=2)
    with pytest.raises(FetchError, match="giving up after 2 attempts"):
        fetcher.fetch(f"s3://{BUCKET}/media/002.jpg")
    assert proxy.injected == {("reset", "GET"): 2}
    assert fetcher.stats.transient_errors == 2
    proxy.set_faults(f"/{BUCKET}/media/", Faults())
    url = f"s3://{BUCKET}/media/002.jpg"
    assert fetcher.fetch(url) == objects[url]


def test_the_proxy_forwards_writes_and_listings_faithfully(s3, objects, proxy):
    fs = fetcher_via(proxy, s3)._filesystem("s3")
    fs.pipe(f"{BUCKET}/written/a.bin", b"through the proxy" * 1000)
    assert fs.cat(f"{BUCKET}/written/a.bin") == b"through the proxy" * 1000
    assert fs.ls(f"{BUCKET}/written", detail=False) == [f"{BUCKET}/written/a.bin"]
    assert {"PUT", "GET", "LIST"} <= set(proxy.requests)
    assert proxy.injected_total() == 0


def test_fault_choices_are_deterministic_per_seed(s3, objects):
    def run(seed: int) -> list:
        with FaultProxy(s3.endpoint_url, seed=seed) as proxy:
            proxy.set_faults(f"/{BUCKET}/media/", Faults(error_500=0.2, slow_down_503=0.2))
            fetcher = fetcher_via(proxy, s3)
            for url in list(objects)[:6]:
                with contextlib.suppress(FetchError):
                    fetcher.fetch(url)
            return proxy.log

    assert run(1) == run(1) != run(2)
