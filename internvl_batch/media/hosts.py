"""Per-host bookkeeping of one worker's fetches: which host a URL is, whether a host can
be reached at all, and giving up a web host that cannot (a circuit breaker).

A web manifest has many hosts, some dead: without this, every row of a dead host waits
out its own timeouts and retries, and a worker's slots fill with rows that cannot succeed.
Only failures to reach the host count (refused or reset connections, timeouts, no DNS
answer): a host that answers, even with 404s or 503s, is alive, and its rows get their
own statuses through the normal retries.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable

from internvl_batch.storage.classify import describe

# How long a host that could not be reached stays given up before one request probes it again.
GIVE_UP_S = 60.0
_UNREACHABLE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN")
    if hasattr(errno, n)
)


def host_of(url: str) -> str | None:
    """`scheme://host[:port]` of a remote URL (the bucket for object stores), None for local paths."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() in ("file", "local"):
        return None
    netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1].lower()  # no userinfo: it is no part of the host
    return f"{scheme.lower()}://{netloc}"


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the host did not answer at all (as opposed to answering with an error)."""
    answered: tuple[type, ...] = ()
    unreached: tuple[type, ...] = (TimeoutError, ConnectionError, socket.gaierror)
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        answered += (aiohttp.ClientResponseError,)
        unreached += (aiohttp.ClientConnectionError,)
    try:
        import botocore.exceptions as boto
    except ImportError:
        pass
    else:
        answered += (boto.ClientError,)
        unreached += (boto.ConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError)
    found = False
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        current = chain.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, answered):
            return False
        if isinstance(current, unreached) or (isinstance(current, OSError) and current.errno in _UNREACHABLE_ERRNOS):
            found = True
        chain += [current.__cause__, current.__context__]
    return found


class HostBook:
    """Consecutive failures to reach each host, and the hosts given up, for one worker.
    Thread-safe: the worker's fetch threads share it."""

    def __init__(self, max_errors: int, give_up_s: float = GIVE_UP_S, clock: Callable[[], float] = time.monotonic):
        self.max_errors, self.give_up_s, self._clock = max_errors, give_up_s, clock
        self._lock = threading.Lock()
        self._errors: dict[str, int] = {}
        self._last: dict[str, str] = {}
        self._until: dict[str, float] = {}
        self.given_up = 0  # times a host was given up

    def refusal(self, host: str | None) -> str | None:
        """Why a request to `host` should not be sent now, or None."""
        if host is None:
            return None
        with self._lock:
            until = self._until.get(host)
            if until is None:
                return None
            if self._clock() >= until:
                # Time to probe: one more failure gives it up again, a success restores it.
                del self._until[host]
                self._errors[host] = self.max_errors - 1
                return None
            return (
                f"host {host} given up: {self.max_errors} requests in a row could not reach it "
                f"(fetch.host_max_errors={self.max_errors}); last: {self._last.get(host, '?')}"
            )

    def answered(self, host: str | None) -> None:
        if host is not None:
            with self._lock:
                self._errors.pop(host, None)

    def failed(self, host: str | None, exc: BaseException) -> None:
        if host is None:
            return
        if not unreachable(exc):  # it answered, with an error: alive
            self.answered(host)
            return
        with self._lock:
            n = self._errors.get(host, 0) + 1
            self._errors[host] = n
            self._last[host] = describe(exc)
            if n >= self.max_errors and host not in self._until:
                self._until[host] = self._clock() + self.give_up_s
                self.given_up += 1

    def health(self, host: str | None) -> HostHealth | None:
        return None if host is None else HostHealth(self, host)


class HostHealth:
    """One host's view of the book, handed to the Fetcher's retry loop."""

    def __init__(self, book: HostBook, host: str):
        self.book, self.host = book, host

    def refusal(self) -> str | None:
        return self.book.refusal(self.host)

    def answered(self) -> None:
        self.book.answered(self.host)

    def failed(self, exc: BaseException) -> None:
        self.book.failed(self.host, exc)
