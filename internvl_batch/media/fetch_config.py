"""What the Fetcher may fetch, how much, how hard it retries, how many objects a worker
keeps in flight (`FetchConfig`); and what its fetches met (`FetchStats`)."""

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from internvl_batch.media.ssrf import parse_allowed_entry

LOCAL_PROTOCOLS = frozenset({"file", "local"})


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
    concurrency: int = Field(
        32,
        ge=1,
        description="Objects one CPU worker fetches at once (images, and the opening of videos), across all "
        "the rows it holds: it decodes and tiles whatever has arrived while the rest travel. At ~25 ms of CPU "
        "per image a worker needs latency / 25 ms + 1 in flight: 32 hides ~750 ms (web hosts), with room to "
        "spare at the 20-200 ms of object stores. Each is a thread, mostly waiting.",
    )
    max_bytes_in_flight: int = Field(
        256 * 1024**2,
        gt=0,
        description="Encoded media bytes one worker holds at once: objects being downloaded (counted at their "
        "size, known before their body is read; at max_bytes when the store does not say) and downloaded ones "
        "not yet decoded. A download waits while the sum would pass this; an object larger than it is fetched "
        "alone. Tiles and video frames are not counted (a video is read by range, a block at a time).",
    )
    per_host: int = Field(
        16,
        ge=1,
        description="Most requests one worker sends to one http(s) host at once (politeness toward web hosts: "
        "lower it for small ones); object stores (s3, gs, ...) are not limited. A worker whose media is all "
        "on one host fetches at most per_host / latency objects a second: 16 keeps up with ~25 ms of CPU "
        "per image up to ~400 ms per response.",
    )
    host_max_errors: int = Field(
        5,
        ge=1,
        description="A web (http(s)) host that this many requests in a row could not reach (connection refused "
        "or reset, timeouts, no DNS answer) is given up by the worker for a minute: its rows get fetch_error at "
        "once, naming the host, and retries to it stop. A host that answers, even with errors, is not given up; "
        "nor is an object store's endpoint (its throttling and timeouts are retried).",
    )

    @field_validator("allowed_schemes")
    @classmethod
    def _no_local_scheme(cls, schemes: list[str]) -> list[str]:
        schemes = [s.lower() for s in schemes]
        local = sorted(LOCAL_PROTOCOLS.intersection(schemes))
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
