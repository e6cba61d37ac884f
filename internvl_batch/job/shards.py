"""Shards: the unit of work and of bookkeeping, cut from each manifest file by row number.

Shard k of a file holds its records [k * shard_rows, (k + 1) * shard_rows), so shard ids
(`<file key>-<k>`) are stable across reruns of an unchanged manifest, and a file that
grows by appended rows keeps its earlier shards. A record is a non-blank JSONL line, a
CSV record or a parquet row. Planning a file reads it once on a worker and returns one
small `Shard` per shard: its row range, where to start reading it (byte offset of an
uncompressed JSONL shard, the parquet row groups that hold it), the line of its first
record (for the stable ids of rows that have none) and a checksum of its rows, which
tells whether a shard processed by an earlier run still holds the same rows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from internvl_batch.storage import retry

_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ManifestFile:
    path: str  # as its filesystem names it (no protocol)
    fmt: str  # jsonl | csv | parquet
    compression: str | None  # fsspec's name (gzip, bz2, ...) or None
    fingerprint: str  # size + etag / mtime: a plan made for it stays valid while this does

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
        return self.fmt == "jsonl" and self.compression is None


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


def cut_shards(fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int] | None = None) -> list[Shard]:
    """Every shard of one file. `prefix_rows` (shard index -> rows an earlier run processed)
    asks for the checksum of those first rows too, so a shard that only grew is told
    apart from one that changed. Transient storage errors are retried (a whole new read)."""
    return retry.call("manifest_plan", file.path, lambda: _cut_shards(fs, file, shard_rows, prefix_rows))


def _cut_shards(fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int] | None) -> list[Shard]:
    if file.fmt == "parquet":
        return _plan_parquet(fs, file, shard_rows)
    scan = _scan_jsonl if file.fmt == "jsonl" else _scan_csv
    with fs.open(file.path, "rb", compression=file.compression) as f:
        shards = list(_shards(file, scan(f), shard_rows, prefix_rows or {}))
        # JSONL only: the CSV scanner's text wrapper closes the file when it is done with it.
        read = f.tell() if file.fmt == "jsonl" and file.compression is None else None
    if read is not None and file.size is not None and read < file.size:
        # A plan cut short would leave the rest of the file out of the job, silently.
        raise retry.ShortRead(f"{file.path}: read {read} of its {file.size} bytes")
    return shards


def _shards(file: ManifestFile, records: Iterator[tuple[int, int, int, bytes]], shard_rows: int, prefix_rows):
    """records: (record number, line number, byte offset, bytes to checksum)."""
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
    for n, line, offset, data in records:
        if n % shard_rows == 0:
            if cut is not None:
                yield done(cut, offset)
            k = n // shard_rows
            cut = _Cut(index=k, row_start=n, line_start=line, byte_start=offset, prefix_rows=prefix_rows.get(k))
        cut.crc = zlib.crc32(data, cut.crc)
        cut.rows += 1
        if cut.prefix_rows is not None and cut.rows == cut.prefix_rows:
            cut.prefix_crc = cut.crc
        end = offset + len(data)
    if cut is not None:
        yield done(cut, end)


def _scan_jsonl(f) -> Iterator[tuple[int, int, int, bytes]]:
    """Non-blank lines as (record, line, offset, bytes), found with numpy over 16 MiB chunks
    (a Python loop over 100M lines would dominate planning)."""
    n = 0
    line_no = 0
    offset = 0  # of `tail` in the file
    tail = b""
    while True:
        chunk = f.read(_CHUNK)
        data = tail + chunk if chunk else tail
        if not data:
            return
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1  # one past each '\n'
        if not chunk and (not len(ends) or ends[-1] != len(data)):
            ends = np.append(ends, len(data))  # the last line has no newline
        start = 0
        for end in ends.tolist():
            line_no += 1
            line = data[start:end]
            if is_record(line):
                yield n, line_no, offset + start, line
                n += 1
            start = end
        tail = data[start:]
        offset += start
        if not chunk:
            return


def is_record(line: bytes) -> bool:
    """A JSONL line that is a record: not blank. Planner and reader must agree on it."""
    # Only a line that starts with whitespace can be blank: strip just those.
    return bool(line) and (line[0] not in b" \t\r\n\f\v" or bool(line.strip()))


def _scan_csv(f) -> Iterator[tuple[int, int, int, bytes]]:
    """CSV records (a quoted field may span lines, so records are found by the csv module)."""
    import csv
    import io

    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    seed = ("\x1f".join(header) + "\x1e").encode()
    line, n = reader.line_num, 0
    for fields in reader:
        if fields:  # csv.DictReader (the reader's) skips empty rows too
            # The header is part of every record's checksum: renaming a column changes every shard.
            yield n, line + 1, 0, seed + ("\x1f".join(fields) + "\x1e").encode()
            n += 1
        line = reader.line_num


def _plan_parquet(fs: Any, file: ManifestFile, shard_rows: int) -> list[Shard]:
    import pyarrow.parquet as pq

    with fs.open(file.path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    starts, row = [], 0
    for i in range(meta.num_row_groups):
        starts.append(row)
        row += meta.row_group(i).num_rows
    total = row
    shards = []
    for k in range((total + shard_rows - 1) // shard_rows):
        lo, hi = k * shard_rows, min((k + 1) * shard_rows, total)
        groups = [i for i, s in enumerate(starts) if s < hi and s + meta.row_group(i).num_rows > lo]
        # Footer facts of the row groups it reads, and its slice of them: a rewritten file
        # has other sizes and offsets even with the same row count.
        facts = [lo, hi] + [_row_group_facts(meta.row_group(i)) for i in groups]
        shards.append(
            Shard(
                id=shard_id(file, k), path=file.path, index=k, row_start=lo, rows=hi - lo, line_start=lo + 1,
                checksum=f"{zlib.crc32(repr(facts).encode()):08x}", row_groups=tuple(groups),
                rg_row_start=starts[groups[0]],
            )
        )  # fmt: skip
    return shards


def _row_group_facts(rg) -> tuple:
    cols = []
    for c in range(rg.num_columns):
        col = rg.column(c)
        stats = col.statistics
        minmax = (stats.min, stats.max) if stats is not None and stats.has_min_max else None
        cols.append((col.path_in_schema, col.data_page_offset, col.total_compressed_size, minmax))
    return rg.num_rows, rg.total_byte_size, tuple(cols)
