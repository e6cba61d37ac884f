"""Media read by byte range instead of whole: long videos.

A video is opened, not fetched: `open_ranged` checks the fetch policy and learns the
object's size (one request), and the decoder then reads the ranges it asks for, a block at
a time, each read under the fetch policy (retries, timeouts, the SSRF-guarded http session,
the host book). `BlockReader` keeps a few blocks and reads the next one ahead while the
current one is consumed, so a worker holds a bounded number of bytes of any video
whatever its size. Embedded videos (`video_bytes`) are a `BytesObject`: the same reader
over memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Protocol

from internvl_batch.media.errors import EmptyMedia, MediaError, MediaNotFound, TooLarge
from internvl_batch.media.fetch import HTTP_PROTOCOLS, Fetcher
from internvl_batch.media.hosts import HostHealth
from internvl_batch.media.http_read import RangeIgnored, range_http

BLOCK_BYTES = 1024**2  # what a seek costs at least: small, since a frame's GOP is often less
KEEP_BLOCKS = 8  # plus up to AHEAD read ahead: at most 16 blocks (16 MiB) of one video in memory
AHEAD = 8  # blocks read ahead of a sequential read (decord's index pass): storage latency overlapped


class RangedObject(Protocol):
    label: str  # the URL or name, for messages
    size: int

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end); raises a MediaError when they cannot be had."""
        ...


@dataclass
class LocalFile:
    """A local video: the decoder reads it by path itself."""

    label: str
    path: str


class BytesObject:
    def __init__(self, data: bytes, label: str):
        self.data, self.label, self.size = data, label, len(data)
        self.bytes_read = 0

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]


class RemoteObject:
    """An object on s3/gs/http(s)/... read by range through the worker's Fetcher."""

    def __init__(self, fetcher: Fetcher, url: str, protocol: str, path: str, size: int, host: HostHealth | None,
                 first: bytes | None = None):  # fmt: skip
        self.fetcher, self.label, self.protocol, self.path, self.size, self.host = (
            fetcher, url, protocol, path, size, host,
        )  # fmt: skip
        self._first = first  # the bytes the opening request read (http), served once
        self.bytes_read = len(first or b"")
        self._lock = threading.Lock()

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        first = self._first
        if first is not None and start == 0 and end <= len(first):
            self._first = None
            return first[:end]
        try:
            data = self.fetcher.retrying(self.label, lambda: self._read_once(start, end), self.host)
        except MediaError:
            self.fetcher.count(failures=1)
            raise
        with self._lock:
            self.bytes_read += len(data)
        return data

    def _read_once(self, start: int, end: int) -> bytes:
        fs = self.fetcher.filesystem(self.protocol)
        if self.protocol in HTTP_PROTOCOLS:
            from fsspec.asyn import sync

            data, _ = sync(fs.loop, range_http, fs, self.label, start, end)
        else:
            data = fs.cat_file(self.path, start=start, end=end)
        if len(data) != end - start:
            # A short read would give the decoder a silently truncated video.
            raise ConnectionResetError(
                f"read {len(data)} of bytes {start}-{end - 1}: the object changed or the read was cut"
            )
        return data


def open_ranged(
    fetcher: Fetcher, url: str, max_bytes: int, host: HostHealth | None = None
) -> RemoteObject | BytesObject | LocalFile:
    """A video to decode: its size known and checked against `max_bytes` (video.max_bytes),
    nothing of it read yet (http: its first block). A server that ignores Range requests
    gets the old treatment: the whole object, under fetch.max_bytes. Counted as one fetch."""
    fetcher.count(fetches=1)
    try:
        return _open(fetcher, url, max_bytes, host)
    except MediaError:
        fetcher.count(failures=1)
        raise


def _open(fetcher: Fetcher, url: str, max_bytes: int, host: HostHealth | None):
    protocol, path = fetcher.resolve(url)
    if protocol == "file":
        return LocalFile(url, path)  # sizes and errors: media/video.py, as before
    fs = fetcher.filesystem(protocol)
    if protocol in HTTP_PROTOCOLS:
        from fsspec.asyn import sync

        def first_block() -> tuple[bytes, int] | None:
            try:
                return sync(fs.loop, range_http, fs, url, 0, BLOCK_BYTES)
            except RangeIgnored:
                return None

        first = fetcher.retrying(url, first_block, host)
        if first is None:
            data = fetcher.retrying(url, lambda: fetcher.read_whole(url, protocol, path), host)
            return BytesObject(data, url)
        head, size = first
    else:
        head = None
        info = fetcher.retrying(url, lambda: fs.info(path), host)
        if info.get("type") == "directory":
            raise MediaNotFound(f"{url}: is a directory, not a file")
        size = info.get("size")
        if size is None:  # a store that does not say: the old whole read, under fetch.max_bytes
            return BytesObject(fetcher.retrying(url, lambda: fetcher.read_whole(url, protocol, path), host), url)
    if size > max_bytes:
        raise TooLarge(f"{url}: {size} bytes exceeds video.max_bytes={max_bytes}")
    if size == 0:
        raise EmptyMedia(f"{url}: empty file (0 bytes)")
    return RemoteObject(fetcher, url, protocol, path, size, host, head)


class BlockReader:
    """Block-aligned reads of a ranged object with a small cache and one block read ahead."""

    def __init__(self, obj: RangedObject, executor: Executor, block: int = BLOCK_BYTES, keep: int = KEEP_BLOCKS):
        self.obj, self.executor, self.block, self.keep = obj, executor, block, keep
        self._blocks: OrderedDict[int, Future] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.obj.size

    def _get(self, i: int) -> Future:
        with self._lock:
            fut = self._blocks.get(i)
            if fut is None:
                start = i * self.block
                fut = self.executor.submit(self.obj.read, start, min(self.obj.size, start + self.block))
                self._blocks[i] = fut
                while len(self._blocks) > self.keep + AHEAD:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(i)
            return fut

    def read(self, start: int, end: int) -> bytes:
        return b"".join(self.stream(start, end))

    def stream(self, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) in block pieces. Once a whole block has been taken (a sequential
        read, as decord's index pass), the next one is read while one is consumed; a seek
        that takes a few KB and moves on costs only its own block."""
        end = min(end, self.obj.size)
        if start >= end:
            return
        first, last = start // self.block, (end - 1) // self.block
        for i in range(first, last + 1):
            fut = self._get(i)
            if i > first:
                for ahead in range(i + 1, min(i + AHEAD, last) + 1):
                    self._get(ahead)
            data = memoryview(fut.result())  # slices without copies: a block is held once
            lo = start - i * self.block if i == first else 0
            hi = end - i * self.block if i == last else len(data)
            yield data[lo:hi]
