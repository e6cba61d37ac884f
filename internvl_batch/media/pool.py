"""Many media fetches in flight per worker, so object-store and web latency overlap the
worker's decoding instead of adding to it (img2dataset keeps 16-64 downloads per process
for the same reason).

One `FetchPool` per worker: `fetch.concurrency` threads share one `Fetcher` (one session
per scheme, connections reused); requests start in the order they were submitted, at most
`fetch.per_host` at once to one http(s) host; a web host the `HostBook` gave up fails its
requests at once; and the bytes held (being downloaded, or downloaded and not yet
decoded) stay under `fetch.max_bytes_in_flight` (`ByteBudget`). Every request ends in
exactly one call of its `done` callback, from a fetch thread, with the bytes or the error.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from internvl_batch.media.errors import FetchError, MediaError
from internvl_batch.media.fetch import HTTP_PROTOCOLS, Fetcher
from internvl_batch.media.hosts import HostBook, HostHealth, host_of
from internvl_batch.storage.classify import describe


class ByteBudget:
    """Bytes a worker holds; `acquire` waits while the sum would pass `cap` (an amount larger
    than the cap is let through when nothing else is held, so it can never wait forever)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.used and self.used + n > self.cap:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        if n:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


class Ticket:
    """One object's share of the budget: reserved when its size is known, held until the
    worker has decoded it (`release`)."""

    def __init__(self, budget: ByteBudget, unknown_size: int):
        self.budget, self.unknown_size = budget, unknown_size
        self.held = 0

    def reserve(self, size: int | None) -> None:
        """Called by the Fetcher before an object's body is read (again on a retry)."""
        self.release()
        n = self.unknown_size if size is None else size
        self.budget.acquire(n)
        self.held = n

    def settle(self, size: int) -> None:
        """The object's true size, once read (no wait: it is in memory already)."""
        if size > self.held:
            with self.budget._cond:
                self.budget.used += size - self.held
                self.budget.peak = max(self.budget.peak, self.budget.used)
        else:
            self.budget.release(self.held - size)
        self.held = size

    def release(self) -> None:
        self.budget.release(self.held)
        self.held = 0


@dataclass
class Fetched:
    """A request's outcome: `data` (the bytes, or what `work` returned) or `error`; release
    `ticket` once the data is decoded."""

    url: str
    data: Any
    error: MediaError | None
    ms: float
    ticket: Ticket | None = None

    def release(self) -> None:
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None


# Instead of fetching bytes, a request may run other work on the URL in a fetch slot
# (opening a video by range): work(host) -> result, raising MediaError.
Work = Callable[[HostHealth | None], Any]


@dataclass
class _Request:
    url: str
    host: str | None
    limited: bool  # counts against fetch.per_host
    done: Callable[[Fetched], None]
    work: Work | None = None


class FetchPool:
    def __init__(self, fetcher: Fetcher):
        cfg = fetcher.config
        self.fetcher = fetcher
        self.concurrency, self.per_host = cfg.concurrency, cfg.per_host
        self.budget = ByteBudget(cfg.max_bytes_in_flight)
        self.hosts = HostBook(cfg.host_max_errors)
        self._unknown_size = min(cfg.max_bytes, cfg.max_bytes_in_flight)
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._parked: dict[str | None, deque[_Request]] = {}  # per host, waiting for its fetch.per_host slot
        self._active = 0
        self._per_host: Counter[str] = Counter()
        self.peak_active = 0

    def __getstate__(self) -> dict:
        raise TypeError("a FetchPool lives in one worker; ship its Fetcher and build one there")

    def submit(self, url: str, done: Callable[[Fetched], None], work: Work | None = None) -> None:
        """Fetch `url` (or run `work` on it) when a slot and its host allow; `done` gets the outcome."""
        host = host_of(url) if isinstance(url, str) else None
        limited = host is not None and host.split("://", 1)[0] in HTTP_PROTOCOLS
        with self._lock:
            self._waiting.append(_Request(url, host, limited, done, work))
        self._pump()

    def _pump(self) -> None:
        """Start what may start, in submission order; a request whose host is at fetch.per_host
        waits aside until one of that host's requests ends; one whose host was given up
        fails at once."""
        start, refused = [], []
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch")
            for host in list(self._parked):
                reason = self.hosts.refusal(host)
                if reason is not None:
                    refused += [(req, reason) for req in self._parked.pop(host)]
            while self._active < self.concurrency and self._waiting:
                req = self._waiting.popleft()
                reason = self.hosts.refusal(req.host)
                if reason is not None:
                    refused.append((req, reason))
                elif req.limited and self._per_host[req.host] >= self.per_host:
                    self._parked.setdefault(req.host, deque()).append(req)
                else:
                    self._active += 1
                    self._per_host[req.host] += req.limited
                    start.append(req)
            self.peak_active = max(self.peak_active, self._active)
            threads = self._threads
        for req in start:
            threads.submit(self._run, req)
        for req, reason in refused:
            self.fetcher.count(fetches=1, failures=1)
            req.done(Fetched(req.url, None, FetchError(f"{req.url}: {reason}"), 0.0))

    def _run(self, req: _Request) -> None:
        ticket = Ticket(self.budget, self._unknown_size)
        started = time.perf_counter()
        # Only web hosts are given up: an object store's endpoint is the operator's, its
        # throttling and timeouts are ridden out by the retries.
        health = self.hosts.health(req.host) if req.limited else None
        try:
            if req.work is not None:
                result = Fetched(req.url, req.work(health), None, 0.0)
            else:
                data = self.fetcher.fetch(req.url, reserve=ticket.reserve, host=health)
                ticket.settle(len(data))
                result = Fetched(req.url, data, None, 0.0, ticket)
        except MediaError as e:
            ticket.release()
            result = Fetched(req.url, None, e, 0.0)
        except Exception as e:  # a bug below must still end the request, as an error the row shows
            ticket.release()
            result = Fetched(req.url, None, FetchError(f"{req.url}: {describe(e)}"), 0.0)
        result.ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._active -= 1
            self._per_host[req.host] -= req.limited
            parked = self._parked.get(req.host)
            if parked:  # that host has a free slot now: its oldest waiting request goes first
                self._waiting.appendleft(parked.popleft())
                if not parked:
                    del self._parked[req.host]
        try:
            req.done(result)
        finally:
            self._pump()

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
