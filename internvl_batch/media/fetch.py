"""Fetch one media object's bytes from object storage or the local disk, with limits and retries.

Any fsspec protocol works (s3fs, gcsfs, adlfs, http, memory, ...) if the scheme is allowed
by `FetchConfig` and its implementation is installed. Failures are raised as the typed
errors of `internvl_batch.media.errors`; only transient ones are retried, and every
fetch is counted in `Fetcher.stats`.

Manifest URLs are untrusted: local paths can be confined to `local_roots`, and http(s)
URLs may not reach loopback, private, link-local or other non-public addresses unless
`allowed_private_hosts` lists them (`ssrf`, enforced at connection time by `guarded_http`).
"""

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from internvl_batch.media.errors import (
    FetchError,
    MediaError,
    MediaNotFound,
    RetriableFetchError,
    TooLarge,
    URLNotAllowed,
)
from internvl_batch.media.ssrf import AddressNotAllowed, AddressPolicy, parse_allowed_entry
from internvl_batch.storage.classify import describe, storage_kind
from internvl_batch.storage.redact import redact_text, redact_url
from internvl_batch.storage.retry import backoff_s

_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_HTTP_PROTOCOLS = frozenset({"http", "https"})
_HTTP_CHUNK = 256 * 1024


class FetchConfig(BaseModel):
    """Where media may be fetched from, how much of it, and how hard to retry."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        64 * 1024**2,
        gt=0,
        description="Largest object fetched, in bytes; larger ones give status too_large without being "
        "downloaded (the size is checked before reading, and the read is capped at max_bytes+1).",
    )
    allow_local: bool = Field(
        True,
        description="Whether plain paths and file:// URLs may be read. On for local runs; turn it off on "
        "shared clusters, where a path would read whatever the worker's disk holds.",
    )
    local_roots: list[str] = Field(
        [],
        description="Absolute directories local paths must lie in, after resolving symlinks and '..' "
        "(a path that leaves them gives fetch_error). Empty: anywhere, when allow_local is true.",
    )
    allowed_schemes: list[str] = Field(
        ["s3", "gs", "gcs", "http", "https", "memory"],
        description="URL schemes that may be fetched (fsspec protocol names). Local files are governed by "
        "allow_local alone, so 'file' is not listed here.",
    )
    allowed_private_hosts: list[str] = Field(
        [],
        description="http(s) hosts that may be reached although they are (or resolve to) loopback, private, "
        "link-local or other non-public addresses, which are refused by default: IP networks in CIDR "
        "form ('10.20.0.0/16', 'fd00::/8', '127.0.0.1') and host names ('minio.storage.svc' exactly, "
        "'*.svc.cluster.local' for any name under it). For in-cluster stores; s3/gs endpoints set in "
        "storage_options are trusted and need no entry.",
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        {},
        description="Filesystem options per scheme, passed to fsspec.filesystem(), e.g. "
        "{'s3': {'client_kwargs': {'endpoint_url': 'http://minio:9000'}}}.",
    )
    max_attempts: int = Field(
        4,
        ge=1,
        description="Attempts per object for transient errors (network, timeouts, throttling, 5xx), "
        "on top of any retries the storage SDK does itself. Other errors are not retried.",
    )
    backoff_initial_s: float = Field(0.5, ge=0, description="Delay before the first retry, doubled each time.")
    backoff_max_s: float = Field(8.0, ge=0, description="Longest delay between two attempts.")
    timeout_s: float | None = Field(
        60.0,
        gt=0,
        description="Connect and read inactivity timeout for s3/s3a and http/https, unless storage_options "
        "set their own; other schemes take timeouts through storage_options. None: SDK defaults.",
    )

    @field_validator("allowed_schemes")
    @classmethod
    def _no_local_scheme(cls, schemes: list[str]) -> list[str]:
        schemes = [s.lower() for s in schemes]
        local = sorted(_LOCAL_PROTOCOLS.intersection(schemes))
        if local:
            raise ValueError(f"{local} cannot be listed: local files are enabled by fetch.allow_local")
        return schemes

    @field_validator("allowed_private_hosts")
    @classmethod
    def _valid_hosts(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_allowed_entry(entry)
        return entries

    @field_validator("local_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[str]) -> list[str]:
        relative = [r for r in roots if not os.path.isabs(r)]
        if relative:
            raise ValueError(f"local roots must be absolute paths, got {relative}")
        return roots


@dataclass
class FetchStats:
    """What one Fetcher's `fetch` calls met; add them up across workers for a job summary.

    Retries the storage SDK makes inside one attempt (botocore, s3fs) are not seen here.
    """

    fetches: int = 0  # fetch() calls
    transient_errors: int = 0  # attempts that failed with a retriable error (network, timeout, throttling, 5xx)
    retries: int = 0  # attempts made again after a transient error
    failures: int = 0  # fetch() calls that raised: the row gets fetch_error or too_large
    exhausted: int = 0  # failures that were still transient after fetch.max_attempts attempts

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: "FetchStats") -> "FetchStats":
        return FetchStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


class Fetcher:
    """Reads whole media objects as bytes; build one per worker from a `FetchConfig`.

    Filesystems are created lazily, one per protocol, and are not pickled: a Fetcher
    shipped to a Ray worker re-creates them there. Not thread-safe (its `stats` are plain
    counters): one Fetcher per worker thread.
    """

    def __init__(self, config: FetchConfig | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config or FetchConfig()
        self.stats = FetchStats()
        self._sleep = sleep
        self._filesystems: dict[str, Any] = {}
        self._address_policy = AddressPolicy(self.config.allowed_private_hosts)
        self._local_roots = [os.path.realpath(r) for r in self.config.local_roots]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Live filesystems hold event loops, sessions and locks that cannot cross processes.
        state["_filesystems"] = {}
        return state

    def fetch(self, url: str) -> bytes:
        """The object's bytes; raises a `MediaError` subclass if it cannot be had."""
        self.stats.fetches += 1
        try:
            return self._fetch(url)
        except MediaError:
            self.stats.failures += 1
            raise

    def _fetch(self, url: str) -> bytes:
        protocol, path = self._resolve(url)
        attempts = self.config.max_attempts
        # The SDK's exceptions quote the URL as given; with credentials in it they stay out of the chain.
        keep_cause = redact_url(url) == url
        attempt = 1
        while True:
            try:
                return self._read(url, protocol, path)
            except (MediaError, MemoryError):
                raise
            except Exception as exc:
                cause = exc if keep_cause else None
                refusal = _address_refusal(exc)
                if refusal is not None:
                    raise URLNotAllowed(f"{url}: {refusal}") from cause
                error_class, detail = classify(exc)
                if not error_class.retriable:
                    raise error_class(f"{url}: {detail}") from cause
                self.stats.transient_errors += 1
                if attempt == attempts:
                    self.stats.exhausted += 1
                    raise FetchError(
                        f"{url}: giving up after {attempt} attempts (fetch.max_attempts={attempts}); "
                        f"last error: {detail}"
                    ) from cause
            self.stats.retries += 1
            self._sleep(self._backoff_s(attempt))
            attempt += 1

    def check(self, url: str) -> str | None:
        """Why `url` could not be fetched (policy, missing, too large), or None. Reads no bytes."""
        try:
            protocol, path = self._resolve(url)
            info = self._filesystem(protocol).info(path)
        except MediaError as exc:
            return str(exc)
        except Exception as exc:
            refusal = _address_refusal(exc)
            return redact_text(f"{url}: {refusal if refusal is not None else describe(exc)}")
        size = info.get("size")
        if size is not None and size > self.config.max_bytes:
            return redact_text(f"{url}: {size} bytes exceeds fetch.max_bytes={self.config.max_bytes}")
        return None

    def _resolve(self, url: str) -> tuple[str, str]:
        """(protocol, filesystem path) for an allowed URL."""
        import fsspec
        from fsspec.core import split_protocol

        if not isinstance(url, str) or not url.strip():
            raise URLNotAllowed(f"{url!r}: empty or non-string URL")
        protocol, _ = split_protocol(url)
        if protocol is None or protocol.lower() in _LOCAL_PROTOCOLS:
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
        elif protocol in _HTTP_PROTOCOLS:
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

    def _filesystem(self, protocol: str) -> Any:
        fs = self._filesystems.get(protocol)
        if fs is None:
            import fsspec

            fs = fsspec.filesystem(protocol, **self.filesystem_options(protocol))
            self._filesystems[protocol] = fs
        return fs

    def filesystem_options(self, protocol: str) -> dict[str, Any]:
        options = dict(self.config.storage_options.get(protocol, {}))
        if protocol in _HTTP_PROTOCOLS:
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
        elif protocol in _HTTP_PROTOCOLS:
            import aiohttp

            # Inactivity timeouts, not a total: a large video on a slow link is fine while bytes flow.
            options["client_kwargs"] = {
                "timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
                **options.get("client_kwargs", {}),
            }
        return options

    def _read(self, url: str, protocol: str, path: str) -> bytes:
        fs = self._filesystem(protocol)
        limit = self.config.max_bytes
        if protocol in _HTTP_PROTOCOLS:
            from fsspec.asyn import sync

            return sync(fs.loop, _stream_http, fs, url, limit)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise MediaNotFound(f"{url}: is a directory, not a file")
        size = info.get("size")
        if size is not None and size > limit:
            raise TooLarge(f"{url}: {size} bytes exceeds fetch.max_bytes={limit}")
        if size == 0:
            # A ranged read of an empty S3 object is an InvalidRange error, not b"".
            return b""
        # Capped read: an object without a known size (or one that grew since info) is not
        # pulled into memory beyond the limit.
        data = fs.cat_file(path, start=0, end=limit + 1)
        if len(data) > limit:
            raise TooLarge(f"{url}: more than {limit} bytes, exceeds fetch.max_bytes={limit}")
        return data

    def _backoff_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.config.backoff_initial_s, self.config.backoff_max_s)


async def _stream_http(fs: Any, url: str, limit: int) -> bytes:
    """One GET, read in chunks and cut off past `limit`.

    Not fsspec's cat_file: it reads the whole response into memory, and a server that
    ignores the Range header (or sends no length, or a compressed body) would make that
    unbounded. One request instead of fsspec's HEAD (or GET) for the size, then a GET.
    """
    kwargs = dict(fs.kwargs)
    # Media is compressed already; identity keeps Content-Length the true size.
    kwargs["headers"] = {**kwargs.get("headers", {}), "Accept-Encoding": "identity"}
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), **kwargs) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        response.raise_for_status()
        size = response.content_length
        if size is not None and size > limit:
            raise TooLarge(f"{url}: {size} bytes exceeds fetch.max_bytes={limit}")
        data = bytearray()
        async for chunk in response.content.iter_chunked(_HTTP_CHUNK):
            data += chunk
            if len(data) > limit:
                raise TooLarge(f"{url}: more than {limit} bytes, exceeds fetch.max_bytes={limit}")
    return bytes(data)


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
