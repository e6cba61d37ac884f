"""Reading a split — consecutive shards of one file — the same way for every input kind:
the records its reader yields, cut to the split's shards, each exactly once, resumed
after the last record on a transient storage error, short reads refused; plus the whole
small-manifest reads `validate` and tests use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from internvl_batch.job.readers.base import ManifestRow, Reader
from internvl_batch.job.shards import ManifestFile, Shard
from internvl_batch.storage import retry


def split_of(file: ManifestFile, shards: list[Shard], **extra: Any) -> dict[str, Any]:
    """A read unit: consecutive shards of one file, read together by one reader."""
    seekable = file.seekable and all(s.byte_start is not None for s in shards)
    return {
        "path": file.path, "fmt": file.fmt, "compression": file.compression, "rel": file.rel, "size": file.size,
        "byte_start": shards[0].byte_start if seekable else None,
        "byte_end": shards[-1].byte_end if seekable else None,
        "row_groups": sorted({g for s in shards for g in s.row_groups}),
        "rg_row_start": min((s.rg_row_start for s in shards if s.row_groups), default=0),
        "shards": [{"id": s.id, "row_start": s.row_start, "rows": s.rows, "line_start": s.line_start, **extra}
                   for s in shards],
    }  # fmt: skip


def needed_columns(cfg: Any, columns: tuple[str, ...]) -> list[str]:
    """The manifest columns the job reads (a columnar reader reads only these)."""
    return [cfg.id_column, cfg.image_column, cfg.video_column, cfg.question_column, cfg.start_column,
            cfg.end_column, cfg.clips_column, *cfg.passthrough, *columns]  # fmt: skip


def split_rows(
    reader: Reader,
    fs: Any,
    split: dict[str, Any],
    cfg: Any,
    op: str = "manifest_read",
    columns: tuple[str, ...] = (),
    ids_only: bool = False,
) -> Iterator[tuple[int, int, ManifestRow]]:
    """(record number, line number, row) for the records of a split's shards, in file order,
    each exactly once. A transient storage error reopens the file and goes on after the last
    record yielded; the attempts count from the last record that got through, so a long
    read survives many spread-out errors but not a store that stays down. Anything else,
    or attempts used up, is raised: rows are never skipped. `columns`: those the tasks'
    prompt templates name (carried in each row's `values`). `ids_only`: only the ids matter
    (the duplicate pass): a columnar reader reads the id column alone, so the rows' other
    fields (and errors, other than a missing id) mean nothing."""
    lo = min(s["row_start"] for s in split["shards"])
    hi = max(s["row_start"] + s["rows"] for s in split["shards"])
    attempts = retry.Attempts(op, f"{split['path']} (records {lo}-{hi - 1})")
    after = None
    while True:
        try:
            wanted = [cfg.id_column] if ids_only else needed_columns(cfg, columns)
            for n, line_no, row in _split_rows(reader, fs, split, cfg, lo, hi, after, columns, wanted):
                yield n, line_no, row
                after = n
                attempts.progressed()
            return
        except Exception as e:
            if not attempts.retry(e):
                raise


def _split_rows(reader: Reader, fs, split, cfg, lo: int, hi: int, after: int | None, columns, wanted):
    last = lo - 1
    with contextlib.closing(reader.records(fs, split, wanted)) as records:
        for n, line_no, rec in records:
            if n >= hi:
                break
            last = n
            if n < lo or (after is not None and n <= after):
                continue
            fallback = reader.fallback_id(split, line_no, rec)  # a stable id for rows that have none
            if isinstance(rec, str):
                yield n, line_no, ManifestRow(id=fallback, error=rec)
            else:
                yield n, line_no, reader.to_row(rec, cfg, fallback, columns)
    if last < hi - 1:
        # Fewer records than the plan counted: a cut read nothing below noticed, or a file
        # changed since it was planned. Either way the missing rows must not pass unseen.
        raise retry.ShortRead(
            f"{split['path']}: the read ended after record {last}, the plan has records {lo}-{hi - 1}"
        )
