"""Which manifest rows a pre-flight check looks at, and how many rows the manifest has.

`plan` and `validate` sample the same way: the first rows of up to `SAMPLE_FILES` files
spread over the manifest, a repeated id within the sample marked as the job marks it.
`plan` counts the whole manifest (its totals need it); `validate` asks only the sampled
files how many rows they surely have, so it reads at most a few MB per sampled file.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from internvl_batch.config import JobConfig
from internvl_batch.job.readers import ManifestRow, cut_shards, split_of, split_rows
from internvl_batch.job.readers.webdataset import samples as tar_samples
from internvl_batch.job.shards import ManifestFile, Shard, is_record

SAMPLE_FILES = 8
SCAN_LIMIT_BYTES = 256 * 1024 * 1024  # text manifests up to this size are counted exactly
_ESTIMATE_BYTES = 4 * 1024 * 1024  # else rows per byte from this much of each file


# -- how many rows ------------------------------------------------------------------------------


def _cached_rows(cfg: JobConfig, file: ManifestFile) -> int | None:
    """The file's row count from the output's cached plan (a run or a dry run planned it)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(cfg.output.path, **cfg.output.storage_options)
        cached = json.loads(fs.cat_file(f"{root.rstrip('/')}/_state/files/{file.key}.json"))
    except Exception:  # absent, or unreadable: count another way
        return None
    if cached.get("fingerprint") != file.fingerprint:
        return None
    return sum(s["rows"] for s in cached["shards"])


def _estimated_rows(fs: Any, file: ManifestFile) -> tuple[int, int]:
    """(records per stored byte in the file's first `_ESTIMATE_BYTES` times its size, the
    records seen there: a floor)."""
    from fsspec.compression import compr

    with fs.open(file.path, "rb") as raw:
        f = compr[file.compression](raw, mode="rb") if file.compression else raw
        records = seen = 0
        if file.fmt == "webdataset":  # samples, not lines
            for _ in tar_samples(f, 0, False):
                records += 1
                seen = raw.tell()
                if seen >= _ESTIMATE_BYTES:
                    break
        else:
            for line in f:
                seen += len(line)
                records += is_record(line)
                if seen >= _ESTIMATE_BYTES:
                    break
        consumed = raw.tell() or 1
    records -= file.fmt == "csv"  # a CSV's header is no record
    if seen < _ESTIMATE_BYTES:  # the whole file was read
        return records, records
    return round(records * (file.size or consumed) / consumed), records


def count_rows(cfg: JobConfig, fs: Any, files: list[ManifestFile]) -> tuple[int, str, dict[str, int]]:
    """(rows, how they were counted, rows each file surely has): exact where it is cheap,
    else estimated from bytes."""
    total, how, floors = 0, Counter(), {}
    text_bytes = sum(f.size or 0 for f in files if f.fmt != "parquet")
    for f in files:
        n = _cached_rows(cfg, f)
        if n is not None:
            how["the output's cached plan"] += 1
        elif f.fmt == "parquet":
            n = _parquet_rows(fs, f)
            how["parquet footers"] += 1
        elif text_bytes <= SCAN_LIMIT_BYTES:
            n = sum(s.rows for s in cut_shards(fs, f, shard_rows=1 << 40))
            how["counted"] += 1
        else:
            n, floors[f.path] = _estimated_rows(fs, f)
            how["estimated from bytes"] += 1
        floors.setdefault(f.path, n)
        total += n
    if cfg.input.limit is not None:
        total = min(total, cfg.input.limit)
    exact = "estimated from bytes" not in how
    how_text = ("exact" if exact else "ESTIMATE") + ": " + ", ".join(f"{k} ({v} file(s))" for k, v in how.items())
    return total, how_text, floors


def _parquet_rows(fs: Any, file: ManifestFile) -> int:
    import pyarrow.parquet as pq

    with fs.open(file.path, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def file_floor(cfg: JobConfig, fs: Any, file: ManifestFile) -> int:
    """Rows one file surely has, cheaply: the output's cached plan, a parquet footer, a
    small file's rows as its reader counts them, else the records in its first `_ESTIMATE_BYTES`."""
    n = _cached_rows(cfg, file)
    if n is not None:
        return n
    if file.fmt == "parquet":
        return _parquet_rows(fs, file)
    if file.size is not None and file.size <= _ESTIMATE_BYTES:
        return sum(s.rows for s in cut_shards(fs, file, shard_rows=1 << 40))
    return _estimated_rows(fs, file)[1]


# -- which rows -------------------------------------------------------------------------------


def sample_rows(
    cfg: JobConfig, fs: Any, files: list[ManifestFile], n: int, floors: dict[str, int] | None = None
) -> tuple[list[ManifestRow], int]:
    """The first rows of up to SAMPLE_FILES files spread over the manifest; (rows, files
    read). `floors`: rows each file surely has (reading past a file's end is an error);
    without them (validate) only the chosen files are asked (`file_floor`). A repeated id
    within the sample is marked as the job's duplicate pass marks it: its first row counts."""
    if floors is None:
        files = [f for f in files if f.size != 0]
        floors = {}
    else:
        files = [f for f in files if floors.get(f.path)]
    if not files:
        return [], 0
    chosen = (
        [files[i * len(files) // SAMPLE_FILES] for i in range(SAMPLE_FILES)] if len(files) > SAMPLE_FILES else files
    )
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for f in chosen:
        if f.path not in floors:
            floors[f.path] = file_floor(cfg, fs, f)
        per_file = min(math.ceil(n / len(chosen)), floors[f.path])
        if per_file <= 0:
            continue
        groups: tuple[int, ...] = ()
        if f.fmt == "parquet":
            import pyarrow.parquet as pq

            with fs.open(f.path, "rb") as fh:
                groups = tuple(range(pq.ParquetFile(fh).metadata.num_row_groups))
        shard = Shard("sample", f.path, 0, 0, per_file, 1, "", row_groups=groups)
        for _, line_no, row in split_rows(fs, split_of(f, [shard]), cfg.input, columns=cfg.prompt_columns()):
            if row.id in seen:
                row.mark_duplicate(cfg.input.id_column, f"{f.path}#{line_no}")
            seen.add(row.id)
            rows.append(row)
    return rows[:n], len(chosen)
