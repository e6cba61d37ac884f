"""Fetch one media object's bytes from object storage or the local disk, with limits and retries.

Any fsspec protocol works (s3fs, gcsfs, adlfs, http, memory, ...) if the scheme is allowed
by `FetchConfig` and its implementation is installed. Failures are raised as the typed
errors of `internvl_batch.media.errors`; only transient ones are retried.
"""

import errno
import functools
import random
import time
from collections.abc import Callable
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

_LOCAL_PROTOCOLS = frozenset({"file", "local"})

# Error codes that object stores use for "slow down" or for a failure on their side.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
        "500",
        "502",
        "503",
        "504",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EPIPE",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "EAGAIN",
        "EBUSY",
        "EREMOTEIO",
    )
    if hasattr(errno, name)
)


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
    allowed_schemes: list[str] = Field(
        ["s3", "gs", "gcs", "http", "https", "memory"],
        description="URL schemes that may be fetched (fsspec protocol names). Local files are governed by "
        "allow_local alone, so 'file' is not listed here.",
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


class Fetcher:
    """Reads whole media objects as bytes; build one per worker from a `FetchConfig`.

    Filesystems are created lazily, one per protocol, and are not pickled: a Fetcher
    shipped to a Ray worker re-creates them there.
    """

    def __init__(self, config: FetchConfig | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config or FetchConfig()
        self._sleep = sleep
        self._filesystems: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Live filesystems hold event loops, sessions and locks that cannot cross processes.
        state["_filesystems"] = {}
        return state

    def fetch(self, url: str) -> bytes:
        """The object's bytes; raises a `MediaError` subclass if it cannot be had."""
        protocol, path = self._resolve(url)
        attempts = self.config.max_attempts
        attempt = 1
        while True:
            try:
                return self._read(url, protocol, path)
            except (MediaError, MemoryError):
                raise
            except Exception as exc:
                error_class, detail = _classify(exc)
                if not error_class.retriable:
                    raise error_class(f"{url}: {detail}") from exc
                if attempt == attempts:
                    raise FetchError(
                        f"{url}: giving up after {attempt} attempts (fetch.max_attempts={attempts}); "
                        f"last error: {detail}"
                    ) from exc
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
            return f"{url}: {_describe(exc)}"
        size = info.get("size")
        if size is not None and size > self.config.max_bytes:
            return f"{url}: {size} bytes exceeds fetch.max_bytes={self.config.max_bytes}"
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
        return protocol, path

    def _filesystem(self, protocol: str) -> Any:
        fs = self._filesystems.get(protocol)
        if fs is None:
            import fsspec

            fs = fsspec.filesystem(protocol, **self.filesystem_options(protocol))
            self._filesystems[protocol] = fs
        return fs

    def filesystem_options(self, protocol: str) -> dict[str, Any]:
        options = dict(self.config.storage_options.get(protocol, {}))
        timeout = self.config.timeout_s
        if timeout is None:
            return options
        if protocol in ("s3", "s3a"):
            options["config_kwargs"] = {
                "connect_timeout": timeout,
                "read_timeout": timeout,
                **options.get("config_kwargs", {}),
            }
        elif protocol in ("http", "https"):
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
        """Delay after failed attempt `attempt` (1-based): exponential, capped, half of it jittered."""
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        # Jitter spreads out workers that were throttled together; the fixed half keeps the backoff real.
        return cap / 2 + random.uniform(0, cap / 2)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _classify(exc: Exception) -> tuple[type[FetchError], str]:
    """The error class for an exception from a filesystem, and a description of it.

    The deepest recognised exception in the `raise ... from` chain decides: wrappers are
    generic (fsspec's HTTP filesystem turns a 503 into FileNotFoundError, s3fs turns
    botocore errors into OSError subclasses) while the original says what happened.
    Anything unrecognised is a non-retriable FetchError.
    """
    kind, decider = None, exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current_kind = _kind(current)
        if current_kind is not None:
            kind, decider = current_kind, current
        current = current.__cause__
    detail = _describe(exc) if decider is exc else f"{_describe(exc)} (caused by {_describe(decider)})"
    if kind == "not_found":
        return MediaNotFound, f"not found: {detail}"
    if kind == "transient":
        return RetriableFetchError, detail
    return FetchError, detail


def _kind(exc: BaseException) -> str | None:
    """'not_found', 'transient', 'fatal', or None when this exception alone does not tell."""
    types = _sdk_exception_types()
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, (PermissionError, IsADirectoryError)):
        return "fatal"
    if isinstance(exc, types["client_error"]):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _NOT_FOUND_CODES or status == 404:
            return "not_found"
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return "transient"
        return "fatal"
    if isinstance(exc, types["http_response_error"]):
        if exc.status == 404:
            return "not_found"
        return "transient" if exc.status in (408, 429) or exc.status >= 500 else "fatal"
    if isinstance(exc, (TimeoutError, ConnectionError) + types["transient"]):
        return "transient"
    if isinstance(exc, types["sdk_error"]):
        return "fatal"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"
    return None


@functools.cache
def _sdk_exception_types() -> dict[str, tuple[type[BaseException], ...]]:
    """Exception classes of the storage SDKs that are installed (imported on first use)."""
    types: dict[str, tuple[type[BaseException], ...]] = {
        "client_error": (),
        "http_response_error": (),
        "transient": (),
        "sdk_error": (),
    }
    try:
        import botocore.exceptions as boto
        from botocore.parsers import ResponseParserError
    except ImportError:
        pass
    else:
        types["client_error"] += (boto.ClientError,)
        # Connection failures and timeouts; ResponseParserError because throttled responses
        # sometimes carry invalid XML (s3fs treats it as retriable for the same reason).
        types["transient"] += (
            boto.HTTPClientError,
            boto.ConnectionError,
            boto.IncompleteReadError,
            ResponseParserError,
        )
        types["sdk_error"] += (boto.BotoCoreError,)
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        types["http_response_error"] += (aiohttp.ClientResponseError,)
        types["transient"] += (aiohttp.ClientError,)
    return types
