"""The one vocabulary of row outcomes: every status written to the output or compared
anywhere in the package is a member of `Status`.

A `StrEnum`, so members compare equal to their strings and land in Arrow/parquet as plain
strings (`"ok"`, `"fetch_error"`, ...), the values users filter on.
"""

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    INVALID_ROW = "invalid_row"  # the manifest row itself can't be work (no id, no media, bad JSON, duplicate)
    FETCH_ERROR = "fetch_error"  # the media's bytes could not be fetched (missing, refused URL, network)
    DECODE_ERROR = "decode_error"  # fetched, but not a decodable image or video
    TOO_LARGE = "too_large"  # over a configured limit: bytes, pixels, frames, duration, images per prompt
    CONTEXT_OVERFLOW = "context_overflow"  # the prompt does not fit model.max_model_len
    ENGINE_ERROR = "engine_error"  # the engine rejected this one request


# Outcomes that `runtime.retry_failed` leaves alone: the manifest row itself decided them,
# so a retry would only repeat them. Every other failure may heal (a fetch, a limit, the engine).
SETTLED = frozenset({Status.OK, Status.INVALID_ROW})
