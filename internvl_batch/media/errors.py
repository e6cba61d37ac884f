"""Typed errors for one media item that could not be fetched or decoded.

A bad media item is data, not a crash: fetch/decode code raises these, and the pipeline
turns them into an output row with `status` (from the class) and `error` (the message).
Every message names the item (URL or source) and, for limits, the config field and value,
so a row can be understood without the logs.

Constructors take only the message: exceptions cross process boundaries in Ray, and
`Exception` pickles `args` only. The message is redacted on the way in (`redact_text`):
URLs in it lose their userinfo and signature-like query parameters, so a presigned URL
never puts its signature into an output row, a log line or a pickle.
"""

from typing import ClassVar

from internvl_batch.status import Status
from internvl_batch.storage.redact import redact_text


class MediaError(Exception):
    """Base class; never raised itself. `status` is the output row's status."""

    status: ClassVar[Status]
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = ""):
        super().__init__(redact_text(str(message)))


class FetchError(MediaError):
    """The bytes could not be fetched; also the final error once retries are exhausted."""

    status = Status.FETCH_ERROR


class MediaNotFound(FetchError):
    """The object or file does not exist (retrying will not help)."""


class URLNotAllowed(FetchError):
    """The URL is refused by configuration: unknown or disallowed scheme, local path when
    `fetch.allow_local` is false or outside `fetch.local_roots`, no object path, or an
    http(s) host that is (or resolves to) a loopback, private, link-local or other
    non-public address not in `fetch.allowed_private_hosts`."""


class RetriableFetchError(FetchError):
    """A transient failure (network error, timeout, throttling, 5xx); the fetcher retries."""

    retriable = True


class DecodeError(MediaError):
    """The bytes were fetched but are not a decodable image or video."""

    status = Status.DECODE_ERROR


class EmptyMedia(DecodeError):
    """Zero bytes, or a video with no frames."""


class NotAnImage(DecodeError):
    """No allowed image format recognises the bytes."""


class TruncatedImage(DecodeError):
    """The image header is valid but the pixel data ends early."""


class VideoDecodeError(DecodeError):
    """The video container or stream cannot be read."""


class TooLarge(MediaError):
    """Over a configured limit: bytes, pixels (decompression bomb), video duration or frames."""

    status = Status.TOO_LARGE
