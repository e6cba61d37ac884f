"""Retries for the job's own storage I/O: manifest listings and reads, the duplicate pass,
the output's parts, ledger entries and state files.

A media object that cannot be fetched becomes a fetch_error row (media/fetch.py). The
job's own I/O has no such way out: a manifest read or a part write that fails would lose
rows or fail the job. So those operations are retried here when the error is transient,
by the same classification as media fetches (storage/classify.py: network errors, timeouts,
throttling, 5xx), with capped, jittered exponential backoff. A missing object or a refused
request is raised at once, and an operation still failing after `max_attempts` raises
`StorageError`, which fails the job loudly (the output stays resumable).

Every retried operation is safe to repeat: reads are, and a write publishes a whole object
under its final name (an object store on completion of the upload, a local file by a
rename), so a retried write of the same name replaces, never duplicates.

Transient errors and retries are counted per process. Workers report theirs to the job
monitor (`drain()` -> `MonitorClient.count`), tasks return theirs, the driver adds its
own: the run summary's counters (`_SUCCESS`) hold `storage_transient_errors`,
`storage_retries` and `storage_retries_<op>` for the ops below.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from internvl_batch.storage.classify import describe, storage_kind
from internvl_batch.storage.redact import redact_text

log = logging.getLogger("internvl_batch")
T = TypeVar("T")

# What each counted operation is; `storage_retries_<op>` in the run summary.
OPS = {
    "manifest_list": "listing the manifest's files",
    "manifest_plan": "reading a manifest file to cut its shards",
    "manifest_dedup": "reading a split's ids for the duplicate-id pass",
    "manifest_read": "reading a split's rows",
    "output_list": "listing parts or ledger entries",
    "output_read": "reading a part, a ledger entry or a state file",
    "output_write": "writing a part, a ledger entry, a state file or _SUCCESS",
    "output_remove": "removing a superseded part, entry or marker",
}


@dataclass(frozen=True)
class RetryPolicy:
    """More attempts than a media fetch (fetch.max_attempts=4) with the same backoff: giving
    up here fails the whole job, not one row. 6 attempts wait 7.75-15.5 s in all."""

    max_attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0


POLICY = RetryPolicy()


class StorageError(OSError):
    """A storage operation that kept failing with transient errors; the message is redacted."""


class ShortRead(OSError):
    """A read ended before the records the plan counted: retried (a cut connection that no
    layer below noticed), then fatal (the file changed since it was planned)."""


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Delay after failed attempt `attempt` (1-based): exponential, capped, half of it jittered,
    so workers throttled together spread out while the fixed half keeps the backoff real."""
    cap = min(max_s, initial_s * 2 ** (attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)


def kind_of(exc: BaseException) -> str | None:
    """'not_found', 'transient', 'fatal' or None (unrecognised: not retried)."""
    # A stream that ends early (a gzip member cut off: EOFError) is what a dropped connection
    # looks like to the layers above the SDK; at rest it fails again and is given up on.
    if isinstance(exc, (ShortRead, EOFError)):
        return "transient"
    if isinstance(exc, StorageError):
        return "fatal"  # given up on already
    kind = storage_kind(exc)[0]
    context = exc.__context__
    if kind is None and context is not None and not exc.__suppress_context__ and kind_of(context) == "transient":
        # An SDK's own handler that breaks on a transient error: s3fs 2026.9 turns a read
        # timeout inside a file read into IndexError (it indexes the timeout's empty args).
        return "transient"
    return kind


def is_missing(exc: BaseException) -> bool:
    return kind_of(exc) == "not_found"


# -- counters ------------------------------------------------------------------------------

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def record(counts: dict[str, int]) -> None:
    """Add counts (a task's, handed back to the driver) to this process's."""
    with _lock:
        _counts.update({k: v for k, v in counts.items() if v})


def counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def drain() -> dict[str, int]:
    """This process's counts since the last drain, reset: each is reported exactly once."""
    with _lock:
        taken = dict(_counts)
        _counts.clear()
    return taken


# -- retrying --------------------------------------------------------------------------------

_sleep = time.sleep  # a module attribute, so unit tests can skip the waits


class Attempts:
    """The retry state of one operation. In its `except` clause: `if not attempts.retry(exc):
    raise`. `progressed()` resets the count, for a long read that moves on between failures."""

    def __init__(self, op: str, what: str, policy: RetryPolicy | None = None):
        if op not in OPS:
            raise ValueError(f"unknown storage op {op!r}")
        self.op, self.what = op, what
        self.policy = policy or POLICY
        self.attempt = 1

    def progressed(self) -> None:
        self.attempt = 1

    def retry(self, exc: BaseException) -> bool:
        """False: not transient, re-raise it. True: slept, try again. Raises StorageError
        once the attempts are used up."""
        if kind_of(exc) != "transient":
            return False
        record({"storage_transient_errors": 1})
        detail = redact_text(describe(exc))
        if self.attempt >= self.policy.max_attempts:
            record({"storage_exhausted": 1})
            message = redact_text(
                f"{self.op} of {self.what}: giving up after {self.attempt} attempts with transient errors; "
                f"last: {detail}"
            )
            # A cause whose text redaction would change (a presigned URL) stays out of the traceback.
            cause = exc if redact_text(describe(exc)) == describe(exc) else None
            raise StorageError(message) from cause
        delay = backoff_s(self.attempt, self.policy.backoff_initial_s, self.policy.backoff_max_s)
        log.warning("storage: %s of %s failed (%s); attempt %d of %d, retrying in %.2fs", self.op,
                    redact_text(self.what), detail, self.attempt, self.policy.max_attempts, delay)  # fmt: skip
        record({"storage_retries": 1, f"storage_retries_{self.op}": 1})
        _sleep(delay)
        self.attempt += 1
        return True


def call(op: str, what: str, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """`fn()`, retried on transient errors (see `Attempts`)."""
    attempts = Attempts(op, what, policy)
    while True:
        try:
            return fn()
        except Exception as exc:
            if not attempts.retry(exc):
                raise
