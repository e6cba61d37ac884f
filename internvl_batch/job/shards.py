"""Shards: the unit of work and of bookkeeping, cut from each manifest file by record number.

Shard k of a file holds its records [k * shard_rows, (k + 1) * shard_rows), so shard ids
(`<file key>-<k>`) are stable across reruns of an unchanged manifest, and a file that
grows by appended rows keeps its earlier shards. A record is what the file's reader
(job/readers/) counts: a non-blank JSONL line, a CSV record, a parquet row, a WebDataset
sample. Planning a file reads it once on a worker and returns one small `Shard` per shard:
its row range, where to start reading it (byte offset of an uncompressed JSONL shard or
tar sample, the parquet row groups that hold it), the line of its first record (for the
stable ids of rows that have none) and a checksum of its rows, which tells whether a
shard processed by an earlier run still holds the same rows. This module holds the data
types and the cutting that every reader shares; each reader scans its own format.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

# Formats whose uncompressed files a reader can enter at a shard's byte offset.
SEEKABLE_FORMATS = frozenset({"jsonl", "openai_batch", "webdataset"})


@dataclass(frozen=True)
class ManifestFile:
    path: str  # as its filesystem names it (no protocol)
    fmt: str  # jsonl | csv | parquet | webdataset | openai_batch
    compression: str | None  # fsspec's name (gzip, bz2, ...) or None
    fingerprint: str  # size + etag / mtime: a plan made for it stays valid while this does
    rel: str = ""  # its path relative to the manifest's root (WebDataset ids and media names)

    @property
    def key(self) -> str:
        """Stable across reruns and independent of the other files (unlike a position)."""
        return hashlib.sha1(self.path.encode()).hexdigest()[:12]

    @property
    def size(self) -> int | None:
        """Bytes at listing time (the fingerprint starts with them), None when the store gave none."""
        head = self.fingerprint.split(":", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def seekable(self) -> bool:
        """Can a reader start at a shard's byte offset (instead of reading the file from the top)?"""
        return self.fmt in SEEKABLE_FORMATS and self.compression is None


@dataclass(frozen=True)
class Shard:
    id: str
    path: str
    index: int  # k: the shard holds records [k * shard_rows, k * shard_rows + rows)
    row_start: int
    rows: int
    line_start: int  # 1-based line (text) or row (parquet) of its first record
    checksum: str  # of all its rows
    byte_start: int | None = None  # seekable files only
    byte_end: int | None = None
    row_groups: tuple[int, ...] = ()  # parquet: the row groups holding its rows
    rg_row_start: int = 0  # parquet: file row at which row_groups[0] starts
    prefix_checksum: str | None = None  # of its first `prefix_rows` rows, when asked (appended files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Shard:
        return cls(**{**d, "row_groups": tuple(d.get("row_groups") or ())})


@dataclass
class _Cut:
    """Accumulates one shard while a file is scanned."""

    index: int
    row_start: int
    line_start: int
    byte_start: int
    rows: int = 0
    crc: int = 0
    prefix_rows: int | None = None
    prefix_crc: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shard_id(file: ManifestFile, index: int) -> str:
    return f"{file.key}-{index:06d}"


def shards_from_records(
    file: ManifestFile,
    records: Iterator[tuple[int, int, int, int, bytes]],
    shard_rows: int,
    prefix_rows: dict[int, int],
) -> Iterator[Shard]:
    """records: (record number, line number, byte offset, byte end, bytes to checksum)."""
    cut: _Cut | None = None

    def done(c: _Cut, byte_end: int) -> Shard:
        # None also when the shard now ends before prefix_rows (the file was cut shorter).
        prefix = None if c.prefix_crc is None else f"{c.prefix_crc:08x}"
        return Shard(
            id=shard_id(file, c.index), path=file.path, index=c.index, row_start=c.row_start, rows=c.rows,
            line_start=c.line_start, checksum=f"{c.crc:08x}",
            byte_start=c.byte_start if file.seekable else None, byte_end=byte_end if file.seekable else None,
            prefix_checksum=prefix,
        )  # fmt: skip

    end = 0
    for n, line, offset, record_end, data in records:
        if n % shard_rows == 0:
            if cut is not None:
                yield done(cut, offset)
            k = n // shard_rows
            cut = _Cut(index=k, row_start=n, line_start=line, byte_start=offset, prefix_rows=prefix_rows.get(k))
        cut.crc = zlib.crc32(data, cut.crc)
        cut.rows += 1
        if cut.prefix_rows is not None and cut.rows == cut.prefix_rows:
            cut.prefix_crc = cut.crc
        end = record_end
    if cut is not None:
        yield done(cut, end)


def is_record(line: bytes) -> bool:
    """A JSONL line that is a record: not blank. Planner and reader must agree on it."""
    # Only a line that starts with whitespace can be blank: strip just those.
    return bool(line) and (line[0] not in b" \t\r\n\f\v" or bool(line.strip()))
