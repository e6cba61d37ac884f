"""Which exceptions from a storage SDK are worth retrying, which mean "missing", which are fatal.

fsspec filesystems raise whatever their SDK raises, often wrapped: fsspec's HTTP filesystem
turns a 503 into FileNotFoundError, s3fs turns botocore errors into OSError subclasses.
`storage_kind` looks through the `raise ... from` chain for the exception that says what
happened. One classification for every reader of storage: media fetches (media/fetch.py)
and the job's own I/O (storage/retry.py) agree on what is worth retrying.
"""

import errno
import functools

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


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def storage_kind(exc: BaseException) -> tuple[str | None, BaseException]:
    """('not_found' | 'transient' | 'fatal' | None, the exception that decided it).

    The deepest recognised exception in the `raise ... from` chain decides: wrappers are
    generic while the original says what happened."""
    kind, decider = None, exc
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current_kind = _kind(current)
        if current_kind is not None:
            kind, decider = current_kind, current
        current = current.__cause__
    return kind, decider


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
    if isinstance(exc, types["fatal"]):
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
        "fatal": (),
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
        # Subclasses of ClientError that no retry fixes: a malformed URL or redirect target,
        # a certificate that does not verify.
        types["fatal"] += (aiohttp.InvalidURL, aiohttp.ClientConnectorCertificateError)
        types["transient"] += (aiohttp.ClientError,)
    return types
