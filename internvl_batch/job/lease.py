"""An output lease in object storage: at most one job writes an output (or a schedule's nights) at a time.

One small JSON object (`{holder, token, renewed_at, ttl_s, covers}`) changed only by
conditional writes, so two contenders can't both win:

- acquire: create it if absent (S3 `If-None-Match: *`); if present, take it over only when
  it is released, expired (`renewed_at + ttl_s` passed on the taker's clock) or held by the
  same holder (the same RayJob, resubmitted after a head restart), by a write conditional
  on the ETag read (`If-Match`): of two takers of one expired lease, one write fails.
- renew: every `ttl_s / 4` by a background thread, conditional on the holder's last ETag;
  a renewal that fails because someone else wrote means the lease was lost (the holder
  stalled past its TTL): the holder must stop writing.
- release: a conditional write of a released record (no conditional delete needed).

Stores: s3:// (s3fs; AWS S3, and the S3-compatible stores that implement conditional
writes: MinIO, Cloudflare R2, SeaweedFS, ...) and local paths (a file lock). Others raise
LeaseUnsupported. Clocks: expiry compares the holder's `renewed_at` with the taker's
clock, so keep the TTL far above the nodes' clock skew (NTP: milliseconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("internvl_batch")

HOLDER_ENV = "INTERNVL_LEASE_HOLDER"


class LeaseError(Exception):
    """The lease can't be used as asked."""


class LeaseUnsupported(LeaseError):
    pass


class LeaseHeld(LeaseError):
    def __init__(self, record: dict[str, Any], url: str):
        self.record = record
        expires = record.get("renewed_at", 0) + record.get("ttl_s", 0)
        super().__init__(
            f"{url} is held by {record.get('holder')!r} (covers {record.get('covers')}; renewed "
            f"{time.time() - record.get('renewed_at', 0):.0f}s ago, expires in {max(0.0, expires - time.time()):.0f}s "
            f"unless renewed): another job is writing this output"
        )


class LeaseLost(LeaseError):
    pass


class _Conflict(Exception):
    """A conditional write found the object changed (or present)."""


def default_holder() -> str:
    """The RayJob's identity on KubeRay (its RayCluster keeps its name across head restarts), else this process."""
    if os.environ.get(HOLDER_ENV):
        return os.environ[HOLDER_ENV]
    ns, name = os.environ.get("RAY_CLUSTER_NAMESPACE"), os.environ.get("RAY_CLUSTER_NAME")
    if name:
        return f"raycluster/{ns}/{name}" if ns else f"raycluster/{name}"
    return f"{socket.gethostname()}/{os.getpid()}"


# -- stores: read (data, etag), create, replace-if-etag --------------------------------------


class _S3Store:
    def __init__(self, url: str, storage_options: dict[str, Any]):
        import fsspec

        self.fs, path = fsspec.core.url_to_fs(url, **storage_options)
        self.bucket, self.key, _ = self.fs.split_path(path)

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        async def get():
            try:
                resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            except FileNotFoundError:
                return None
            async with resp["Body"] as body:
                return await body.read(), resp["ETag"]

        return sync(self.fs.loop, get)

    def _put(self, data: bytes, **condition) -> str:
        try:
            resp = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except OSError as e:
            if _precondition_failed(e):
                raise _Conflict() from e
            raise
        return resp["ETag"]

    def create(self, data: bytes) -> str:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, etag: str) -> str:
        return self._put(data, IfMatch=etag)


def _precondition_failed(e: BaseException) -> bool:
    for err in (e, e.__cause__, e.__context__):
        code = str(((getattr(err, "response", None) or {}).get("Error") or {}).get("Code", ""))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return True
    return "pre-condition" in str(e) or "precondition" in str(e).lower()


class _LocalStore:
    """A local (or shared-filesystem) path; a file lock makes read-compare-write atomic."""

    def __init__(self, path: str):
        self.path = Path(path.removeprefix("file://"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes, expect: str | None) -> str:
        with self._locked():
            now = self.read()
            if (now[1] if now else None) != expect:
                raise _Conflict()
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        return hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> str:
        return self._write(data, None)

    def replace(self, data: bytes, etag: str) -> str:
        return self._write(data, etag)


def _store(url: str, storage_options: dict[str, Any]):
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme in ("s3", "s3a"):
        return _S3Store(url, storage_options)
    if scheme == "file":
        return _LocalStore(url)
    raise LeaseUnsupported(
        f"{url}: an output lease needs conditional writes; implemented for s3:// (and S3-compatible stores) "
        f"and local paths, not {scheme}://"
    )


# -- the lease ------------------------------------------------------------------------------


@dataclass
class Lease:
    url: str
    ttl_s: float = 600.0
    holder: str = field(default_factory=default_holder)
    storage_options: dict[str, Any] = field(default_factory=dict)
    covers: list[str] = field(default_factory=list)  # what the holder will write (e.g. its nights)

    def __post_init__(self) -> None:
        self._store = _store(self.url, self.storage_options)
        self._etag: str | None = None
        self._token = uuid.uuid4().hex
        self._renewed = 0.0

    def _record(self, released: bool = False) -> bytes:
        now = time.time()
        body = {"holder": self.holder, "token": self._token, "renewed_at": now, "ttl_s": self.ttl_s,
                "covers": self.covers, "released": released}  # fmt: skip
        return json.dumps(body).encode()

    def current(self) -> dict[str, Any] | None:
        got = self._store.read()
        return json.loads(got[0]) if got else None

    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld (a live holder other than this one)."""
        for _ in range(5):  # each retry follows a write someone else made in between
            got = self._store.read()
            try:
                if got is None:
                    self._etag = self._store.create(self._record())
                else:
                    held = json.loads(got[0])
                    expired = time.time() > held.get("renewed_at", 0) + held.get("ttl_s", 0)
                    if not (held.get("released") or expired or held.get("holder") == self.holder):
                        raise LeaseHeld(held, self.url)
                    self._etag = self._store.replace(self._record(), got[1])
            except _Conflict:
                continue
            self._renewed = time.monotonic()
            log.info("lease %s taken by %s (ttl %.0fs)", self.url, self.holder, self.ttl_s)
            return
        raise LeaseError(f"{self.url}: the lease changed on every try (5); too many contenders")

    def renew(self) -> None:
        if self._etag is None:
            raise LeaseLost(f"{self.url}: not held")
        try:
            self._etag = self._store.replace(self._record(), self._etag)
        except _Conflict:
            self._etag = None
            raise LeaseLost(f"{self.url}: someone else wrote the lease; this job stopped renewing it in time") from None
        self._renewed = time.monotonic()

    def release(self) -> None:
        if self._etag is None:
            return
        with contextlib.suppress(_Conflict, OSError):
            self._store.replace(self._record(released=True), self._etag)
        self._etag = None

    @contextlib.contextmanager
    def held(self, on_lost: Callable[[LeaseLost], None]) -> Iterator[Lease]:
        """Acquire, renew in the background every ttl/4 until the block ends, then release.
        A renewal that fails for longer than the TTL, or finds the lease taken, calls `on_lost`."""
        self.acquire()
        stop = threading.Event()

        def renewer() -> None:
            while not stop.wait(self.ttl_s / 4):
                try:
                    self.renew()
                except LeaseLost as e:
                    on_lost(e)
                    return
                except Exception as e:  # a transient storage error: try again, up to the TTL
                    if time.monotonic() - self._renewed > self.ttl_s:
                        on_lost(LeaseLost(f"{self.url}: no renewal for {self.ttl_s:.0f}s ({e!r})"))
                        return
                    log.warning("lease %s: renewal failed (%r); retrying", self.url, e)

        thread = threading.Thread(target=renewer, name="lease-renewer", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=30)
            self.release()
