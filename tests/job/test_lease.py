"""The output lease against the real S3 server (conditional writes) and on a local path: one holder at
a time, a dead holder's lease expires, a holder that stalled past its TTL finds it lost."""

from __future__ import annotations

import json
import threading
import time

import pytest

from internvl_batch.job.lease import Lease, LeaseHeld, LeaseLost, LeaseUnsupported


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.create_bucket("leases")


@pytest.fixture(params=["s3", "local"])
def where(request, bucket, tmp_path):
    """(lease URL, storage options) on the S3 server or a local path."""
    if request.param == "s3":
        return f"s3://leases/{request.node.name}/_lease.json", bucket
    return str(tmp_path / "out" / "_lease.json"), {}


def test_one_holder_at_a_time_and_release_frees_it(where):
    url, options = where
    a = Lease(url, ttl_s=60, holder="job-a", storage_options=options, covers=["2026-05-01"])
    b = Lease(url, ttl_s=60, holder="job-b", storage_options=options)
    a.acquire()
    with pytest.raises(LeaseHeld, match="held by 'job-a'") as e:
        b.acquire()
    assert e.value.record["covers"] == ["2026-05-01"]
    a.release()
    b.acquire()
    assert b.current()["holder"] == "job-b"


def test_of_many_simultaneous_takers_exactly_one_wins(where):
    url, options = where
    wins, held = [], []
    barrier = threading.Barrier(6)

    def take(i: int) -> None:
        lease = Lease(url, ttl_s=60, holder=f"job-{i}", storage_options=options)
        barrier.wait()
        try:
            lease.acquire()
            wins.append(i)
        except LeaseHeld:
            held.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(held) == 5, (wins, held)


def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_it_lost(where):
    url, options = where
    stalled = Lease(url, ttl_s=0.5, holder="job-a", storage_options=options)
    stalled.acquire()
    time.sleep(0.7)  # the holder stopped renewing (a dead head, a paused process)
    taker = Lease(url, ttl_s=60, holder="job-b", storage_options=options)
    taker.acquire()
    with pytest.raises(LeaseLost):
        stalled.renew()
    assert taker.current()["holder"] == "job-b"


def test_the_same_holder_re_enters_its_lease(where):
    """A RayJob whose head restarted is resubmitted with the same RayCluster name: it goes on."""
    url, options = where
    Lease(url, ttl_s=600, holder="raycluster/ns/nightly-abc", storage_options=options).acquire()
    again = Lease(url, ttl_s=600, holder="raycluster/ns/nightly-abc", storage_options=options)
    again.acquire()
    with pytest.raises(LeaseHeld):
        Lease(url, ttl_s=600, holder="someone-else", storage_options=options).acquire()


def test_held_renews_in_the_background_and_reports_a_lost_lease(where):
    url, options = where
    lost: list[LeaseLost] = []
    lease = Lease(url, ttl_s=0.8, holder="job-a", storage_options=options)
    with lease.held(on_lost=lost.append):
        time.sleep(1.6)  # two TTLs: only renewals keep it
        with pytest.raises(LeaseHeld):
            Lease(url, ttl_s=60, holder="job-b", storage_options=options).acquire()
        assert not lost
        # Someone breaks the lease by hand (an operator deleting it, then a new job taking it).
        Lease(url, ttl_s=60, holder="job-b", storage_options=options)._store.replace(
            json.dumps({"holder": "job-b", "renewed_at": time.time(), "ttl_s": 60}).encode(), lease._etag
        )
        time.sleep(0.6)
    assert lost and "someone else wrote the lease" in str(lost[0])
    assert lease.current()["holder"] == "job-b", "a lost lease is not released over its new holder"


def test_other_stores_are_refused_clearly():
    with pytest.raises(LeaseUnsupported, match="gs://"):
        Lease("gs://bucket/out/_lease.json")
