"""The source: manifest files -> shards -> typed rows, one reader per input kind.

    files.py         which files (one listing; format, compression, fingerprint)
    base.py          the Reader interface, ManifestRow, ManifestError
    rows.py          one record -> one row (ids, media as URL or bytes, times, columns)
    splits.py        a split's rows, the same for every kind (exactly once, resumed, checked)
    text.py          JSONL, CSV          parquet.py   Parquet (HF Image/Video structs too)
    webdataset.py    WebDataset tars     openai_batch.py   OpenAI Batch API request files

Every manifest record yields exactly one row, valid or not: a broken JSON line, a row
without an id or media, a truncated tar's last sample becomes an `invalid_row` row with
the reason, so nothing is dropped. Reading happens per split in the job's reader actors
(and planning in Ray tasks); the driver never parses a record.
"""

from __future__ import annotations

from typing import Any

from internvl_batch.job.readers.base import ManifestError, ManifestRow, Reader
from internvl_batch.job.readers.files import list_files as _list_files
from internvl_batch.job.readers.openai_batch import OpenAIBatchReader
from internvl_batch.job.readers.parquet import ParquetReader
from internvl_batch.job.readers.splits import split_of
from internvl_batch.job.readers.splits import split_rows as _split_rows
from internvl_batch.job.readers.text import CsvReader, JsonlReader
from internvl_batch.job.readers.webdataset import WebDatasetReader
from internvl_batch.job.shards import ManifestFile, Shard
from internvl_batch.storage import retry

READERS: dict[str, Reader] = {
    r.fmt: r for r in (JsonlReader(), ParquetReader(), CsvReader(), WebDatasetReader(), OpenAIBatchReader())
}


def reader_for(fmt: str) -> Reader:
    return READERS[fmt]


def list_files(cfg: Any) -> tuple[Any, list[ManifestFile]]:
    """The manifest's files (`cfg`: the InputConfig), sorted, with fingerprints: one listing, no reads."""
    return _list_files(cfg, READERS)


def manifest_files(cfg: Any) -> tuple[Any, list[str]]:
    fs, files = list_files(cfg)
    return fs, [f.path for f in files]


def cut_shards(fs: Any, file: ManifestFile, shard_rows: int, prefix_rows: dict[int, int] | None = None) -> list[Shard]:
    """Every shard of one file. `prefix_rows` (shard index -> rows an earlier run processed)
    asks for the checksum of those first rows too, so a shard that only grew is told
    apart from one that changed. Transient storage errors are retried (a whole new read)."""
    reader = READERS[file.fmt]
    return retry.call("manifest_plan", file.path, lambda: reader.cut(fs, file, shard_rows, prefix_rows or {}))


def split_rows(
    fs: Any,
    split: dict[str, Any],
    cfg: Any,
    op: str = "manifest_read",
    columns: tuple[str, ...] = (),
    ids_only: bool = False,
):
    """(record number, line number, ManifestRow) of a split's shards (splits.split_rows)."""
    return _split_rows(READERS[split["fmt"]], fs, split, cfg, op, columns, ids_only)


def read_splits(files: list[ManifestFile], shards: list[Shard], resume: set[str] = frozenset()) -> list[dict]:
    """Read units covering `shards`: consecutive shards of a file share one where their
    reader says so (files read from the top; parquet shards sharing a row group)."""
    by_file: dict[str, list[Shard]] = {}
    for s in shards:
        by_file.setdefault(s.path, []).append(s)
    splits = []
    for f in files:
        reader = READERS[f.fmt]
        groups: list[list[Shard]] = []
        for s in sorted(by_file.get(f.path, []), key=lambda s: s.row_start):
            if groups and reader.shares_split(f, groups[-1][-1], s):
                groups[-1].append(s)
            else:
                groups.append([s])
        for g in groups:
            split = split_of(f, g)
            for spec, s in zip(split["shards"], g):
                spec["resume"] = s.id in resume
            splits.append(split)
    return splits


def read_manifest(cfg: Any, columns: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Every row of a small manifest, in file then line order; repeated ids after the first
    are invalid. For `verify` and tests: the job reads shards on workers instead."""
    fs, files = list_files(cfg)
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for file in files:
        for shard in cut_shards(fs, file, shard_rows=1 << 30):
            for _, line_no, row in split_rows(fs, split_of(file, [shard]), cfg, columns=columns):
                if row.id in seen:
                    row.mark_duplicate(cfg.id_column, f"{file.path}#{line_no}")
                seen.add(row.id)
                rows.append(row)
                if cfg.limit is not None and len(rows) >= cfg.limit:
                    return rows
    return rows


def manifest_columns(cfg: Any, n: int = 100) -> set[str]:
    """The columns a manifest's rows have: a parquet file's schema, else the keys of its
    first `n` records (a WebDataset sample: its json fields and `text`); first file only."""
    fs, files = list_files(cfg)
    file, reader = files[0], READERS[files[0].fmt]
    if file.fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(file.path, "rb") as f:
            return set(pq.ParquetFile(f).schema_arrow.names)
    split = split_of(file, [Shard("columns", file.path, 0, 0, n, 1, "")])
    found: set[str] = set()
    records = reader.records(fs, split, [])
    try:
        for i, (_, _, rec) in enumerate(records):
            if i >= n:
                break
            if isinstance(rec, dict):
                found |= reader.columns_of(rec)
    finally:
        records.close()
    return found


def check_prompt_columns(cfg: Any, tasks: list[Any]) -> None:
    """`validate` and `plan`: every column a prompt template names is in the manifest
    (`cfg`: the InputConfig; a row without a value is still that row's invalid_row)."""
    named = {c for t in tasks for c in t.prompt_columns}
    if not named:
        return
    have = manifest_columns(cfg)
    for task in tasks:
        absent = [c for c in task.prompt_columns if c not in have]
        if absent:
            raise ManifestError(
                f"task {task.name!r}: its prompt names column(s) {absent} that the manifest's rows do not have "
                f"(they have: {sorted(have)[:20]}); fix task.prompt or the manifest"
            )


__all__ = ["READERS", "ManifestError", "ManifestRow", "Reader", "check_prompt_columns", "cut_shards", "list_files",
           "manifest_columns", "manifest_files",
           "read_manifest", "read_splits", "reader_for", "split_of", "split_rows"]  # fmt: skip
