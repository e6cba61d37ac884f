"""Fetch one media object's bytes from object storage or the local disk, with limits and retries.

Any fsspec protocol works (s3fs, gcsfs, adlfs, http, memory, ...) if the scheme is allowed
by `FetchConfig` and its implementation is installed. Failures are raised as the typed
errors of `internvl_batch.media.errors`; only transient ones are retried, and every
fetch is counted in `Fetcher.stats`.

Manifest URLs are untrusted: local paths can be confined to `local_roots`, and http(s)
URLs may not reach loopback, private, link-local or other non-public addresses unless
`allowed_private_hosts` lists them (`ssrf`, enforced at connection time by `guarded_http`).

One Fetcher serves a whole worker: its threads share it (`media/pool.py` keeps many
fetches in flight), so each scheme has one filesystem, hence one connection pool.
"""

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from internvl_batch.media.errors import (
    FetchError,
    MediaError,
    MediaNotFound,
    RetriableFetchError,
    TooLarge,
    URLNotAllowed,
)
from internvl_batch.media.fetch_config import LOCAL_PROTOCOLS, FetchConfig, FetchStats
from internvl_batch.media.hosts import HostHealth
from internvl_batch.media.http_read import stream_http
from internvl_batch.media.ssrf import AddressNotAllowed, AddressPolicy
from internvl_batch.storage.classify import describe, storage_kind
from internvl_batch.storage.redact import redact_text, redact_url
from internvl_batch.storage.retry import backoff_s

__all__ = ["FetchConfig", "FetchStats", "Fetcher", "classify"]

HTTP_PROTOCOLS = frozenset({"http", "https"})
T = TypeVar("T")
Reserve = Callable[[int | None], None]


class Fetcher:
    """Reads whole media objects as bytes; build one per worker from a `FetchConfig`.

    Filesystems are created lazily, one per protocol, and are not pickled: a Fetcher
    shipped to a Ray worker re-creates them there. Thread-safe: a worker's fetch threads
    share one Fetcher, so they share its filesystems (one session per scheme) and stats.
    """

    def __init__(self, config: FetchConfig | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config or FetchConfig()
        self.stats = FetchStats()
        self._reported = FetchStats()
        self._sleep = sleep
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._address_policy = AddressPolicy(self.config.allowed_private_hosts)
        self._local_roots = [os.path.realpath(r) for r in self.config.local_roots]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Live filesystems hold event loops, sessions and locks that cannot cross processes.
        state["_filesystems"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def count(self, **deltas: int) -> None:
        """Add to the stats (thread-safe)."""
        with self._lock:
            for name, n in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def unreported(self) -> dict[str, int]:
        """What the stats gained since the last call (for per-batch reports from several threads)."""
        with self._lock:
            now = self.stats.as_dict()
            before = self._reported.as_dict()
            self._reported = FetchStats(**now)
        return {k: now[k] - before[k] for k in now if now[k] != before[k]}

    def fetch(self, url: str, *, reserve: Reserve | None = None, host: HostHealth | None = None) -> bytes:
        """The object's bytes; raises a `MediaError` subclass if it cannot be had.

        `reserve(size)` is called once the object's size is known (None: unknown), before its
        body is read, and may block: the worker's byte budget. `host`: the worker's view of
        the URL's host, told whether it could be reached; a host given up stops the retries."""
        self.count(fetches=1)
        try:
            protocol, path = self.resolve(url)
            return self.retrying(url, lambda: self.read_whole(url, protocol, path, reserve), host)
        except MediaError:
            self.count(failures=1)
            raise

    def retrying(self, url: str, attempt_once: Callable[[], T], host: HostHealth | None = None) -> T:
        """`attempt_once()` under the fetch policy: transient errors retried with backoff up to
        fetch.max_attempts, everything else raised as the typed error for `url`."""
        attempts = self.config.max_attempts
        # The SDK's exceptions quote the URL as given; with credentials in it they stay out of the chain.
        keep_cause = redact_url(url) == url
        attempt = 1
        while True:
            refusal = host.refusal() if host is not None else None
            if refusal is not None:
                raise FetchError(f"{url}: {refusal}")
            try:
                result = attempt_once()
            except MemoryError:
                raise
            except MediaError:
                if host is not None:
                    host.answered()  # too large, a directory: the host answered
                raise
            except Exception as exc:
                cause = exc if keep_cause else None
                refusal = _address_refusal(exc)
                if refusal is not None:
                    raise URLNotAllowed(f"{url}: {refusal}") from cause
                if host is not None:
                    host.failed(exc)
                error_class, detail = classify(exc)
                if not error_class.retriable:
                    raise error_class(f"{url}: {detail}") from cause
                self.count(transient_errors=1)
                if attempt == attempts:
                    self.count(exhausted=1)
                    raise FetchError(
                        f"{url}: giving up after {attempt} attempts (fetch.max_attempts={attempts}); "
                        f"last error: {detail}"
                    ) from cause
                gone = host.refusal() if host is not None else None
                if gone is not None:
                    raise FetchError(f"{url}: {gone}") from cause
            else:
                if host is not None:
                    host.answered()
                return result
            self.count(retries=1)
            self._sleep(self._backoff_s(attempt))
            attempt += 1

    def check(self, url: str, max_bytes: int | None = None, field: str = "fetch.max_bytes") -> str | None:
        """Why `url` could not be fetched (policy, missing, larger than `max_bytes`: by default
        fetch.max_bytes, a video's is video.max_bytes, named by `field`), or None. Reads no bytes."""
        try:
            protocol, path = self.resolve(url)
            info = self.filesystem(protocol).info(path)
        except MediaError as exc:
            return str(exc)
        except Exception as exc:
            refusal = _address_refusal(exc)
            return redact_text(f"{url}: {refusal if refusal is not None else describe(exc)}")
        size, limit = info.get("size"), self.config.max_bytes if max_bytes is None else max_bytes
        if size is not None and size > limit:
            return redact_text(f"{url}: {size} bytes exceeds {field}={limit}")
        return None

    def resolve(self, url: str) -> tuple[str, str]:
        """(protocol, filesystem path) for an allowed URL."""
        import fsspec
        from fsspec.core import split_protocol

        if not isinstance(url, str) or not url.strip():
            raise URLNotAllowed(f"{url!r}: empty or non-string URL")
        protocol, _ = split_protocol(url)
        if protocol is None or protocol.lower() in LOCAL_PROTOCOLS:
            if not self.config.allow_local:
                raise URLNotAllowed(f"{url}: local paths are disabled (fetch.allow_local=false)")
            protocol = "file"
        else:
            # Scheme names are case-insensitive, fsspec's registry is not.
            url = protocol.lower() + url[len(protocol) :]
            protocol = protocol.lower()
            if protocol not in self.config.allowed_schemes:
                raise URLNotAllowed(
                    f"{url}: scheme '{protocol}' is not in fetch.allowed_schemes={self.config.allowed_schemes}"
                )
        try:
            fs_class = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as exc:
            raise URLNotAllowed(f"{url}: no filesystem for scheme '{protocol}': {exc}") from exc
        path = fs_class._strip_protocol(url)
        if not path:
            raise URLNotAllowed(f"{url}: URL has no object path")
        if protocol == "file" and self._local_roots:
            path = self._inside_roots(url, path)
        elif protocol in HTTP_PROTOCOLS:
            self._check_http_host(url)
        return protocol, path

    def _inside_roots(self, url: str, path: str) -> str:
        """The real path of a local `path` if it lies in a local root (symlinks and '..' resolved)."""
        real = os.path.realpath(path)
        for root in self._local_roots:
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                # The resolved path is the one read, so a symlink swapped in after this check
                # cannot point the read elsewhere.
                return real
        raise URLNotAllowed(f"{url}: outside fetch.local_roots={self.config.local_roots}")

    def _check_http_host(self, url: str) -> None:
        """Refuse an IP-literal host early; names are checked when they resolve (guarded_http)."""
        import yarl

        try:
            host = yarl.URL(url).host
        except ValueError as exc:
            raise URLNotAllowed(f"{url}: not a valid URL: {exc}") from None
        if not host:
            raise URLNotAllowed(f"{url}: URL has no host")
        refusal = self._address_policy.host_refusal(host)
        if refusal is not None:
            raise URLNotAllowed(f"{url}: {refusal}")

    def filesystem(self, protocol: str) -> Any:
        """The worker's one filesystem for `protocol` (one session, one connection pool)."""
        fs = self._filesystems.get(protocol)
        if fs is None:
            import fsspec

            options = self.filesystem_options(protocol)
            if protocol in ("s3", "s3a"):
                # botocore keeps 10 connections by default: fewer than the objects in flight.
                pool = max(10, self.config.concurrency)
                options["config_kwargs"] = {"max_pool_connections": pool, **options.get("config_kwargs", {})}
            with self._lock:
                fs = self._filesystems.setdefault(protocol, fsspec.filesystem(protocol, **options))
        return fs

    _filesystem = filesystem  # the name tests (and older callers) use

    def filesystem_options(self, protocol: str) -> dict[str, Any]:
        options = dict(self.config.storage_options.get(protocol, {}))
        if protocol in HTTP_PROTOCOLS:
            from internvl_batch.media.guarded_http import guarded_client

            # Always ours: the address policy lives in the session's connector.
            options["get_client"] = functools.partial(guarded_client, self._address_policy)
        timeout = self.config.timeout_s
        if timeout is None:
            return options
        if protocol in ("s3", "s3a"):
            options["config_kwargs"] = {
                "connect_timeout": timeout,
                "read_timeout": timeout,
                **options.get("config_kwargs", {}),
            }
        elif protocol in HTTP_PROTOCOLS:
            import aiohttp

            # Inactivity timeouts, not a total: a large video on a slow link is fine while bytes flow.
            options["client_kwargs"] = {
                "timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
                **options.get("client_kwargs", {}),
            }
        return options

    def read_whole(self, url: str, protocol: str, path: str, reserve: Reserve | None = None) -> bytes:
        """One attempt at the whole object, capped at fetch.max_bytes (`retrying` retries it)."""
        fs = self.filesystem(protocol)
        limit = self.config.max_bytes
        if protocol in HTTP_PROTOCOLS:
            from fsspec.asyn import sync

            return sync(fs.loop, stream_http, fs, url, limit, reserve)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise MediaNotFound(f"{url}: is a directory, not a file")
        size = info.get("size")
        if size is not None and size > limit:
            raise TooLarge(f"{url}: {size} bytes exceeds fetch.max_bytes={limit}")
        if size == 0:
            # A ranged read of an empty S3 object is an InvalidRange error, not b"".
            return b""
        if reserve is not None:
            reserve(size)
        # Capped read: an object without a known size (or one that grew since info) is not
        # pulled into memory beyond the limit.
        data = fs.cat_file(path, start=0, end=limit + 1)
        if len(data) > limit:
            raise TooLarge(f"{url}: more than {limit} bytes, exceeds fetch.max_bytes={limit}")
        return data

    def _backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.backoff_initial_s, self.config.backoff_max_s)


def classify(exc: Exception) -> tuple[type[FetchError], str]:
    """The error class for an exception from a filesystem, and a description of it
    (`storage_kind` decides; anything unrecognised is a non-retriable FetchError)."""
    kind, decider = storage_kind(exc)
    detail = describe(exc) if decider is exc else f"{describe(exc)} (caused by {describe(decider)})"
    if kind == "not_found":
        return MediaNotFound, f"not found: {detail}"
    if kind == "transient":
        return RetriableFetchError, detail
    return FetchError, detail


def _address_refusal(exc: BaseException) -> str | None:
    """The reason of an AddressNotAllowed anywhere in `exc`'s chain (fsspec wraps it), or None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressNotAllowed):
            return str(current)
        stack += [current.__cause__, current.__context__]
    return None
