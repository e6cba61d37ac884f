"""The source: manifest files -> shards (planned in job/shards.py) -> typed rows, on workers.

A manifest is JSONL, Parquet or CSV (optionally compressed): one file, a directory or a
glob, on any fsspec URL. Every manifest record yields exactly one row, valid or not: a
broken JSON line, a row without an id or media becomes an `invalid_row` row with the
reason, so nothing is dropped. Reading happens per split (a piece of one file holding one
or more shards) in the job's reader actors; the driver never parses a line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.config import InputConfig, PreprocessConfig
from internvl_batch.job.clips import parse_clips
from internvl_batch.job.shards import ManifestFile, Shard, cut_shards, is_record
from internvl_batch.records import passthrough_field
from internvl_batch.status import Status
from internvl_batch.storage import retry
from internvl_batch.storage.redact import redact_url

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


class ManifestError(ValueError):
    """The manifest as a whole can't be read (missing path, unknown format, empty prefix)."""


@dataclass
class ManifestRow:
    id: str
    images: list[str] = field(default_factory=list)
    video: str | None = None
    start: float | None = None
    end: float | None = None
    clips: list[list[float]] | None = None
    question: str | None = None
    passthrough: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None  # set: the row is invalid and becomes an invalid_row result

    @property
    def media(self) -> str:
        return "video" if self.video else ("image" if self.images else "none")

    def item(self, tasks: list[str], shard: str, row: int) -> dict[str, Any]:
        """This row as an ITEM record (job.records) with the tasks left to do for it."""
        return {
            "shard": shard, "row": row, "id": self.id, "images": self.images or None, "video": self.video,
            "start": self.start, "end": self.end, "clips": self.clips, "question": self.question,
            "media": self.media, "tasks": tasks,
            "status": Status.OK if self.error is None else Status.INVALID_ROW, "error": self.error,
            **{passthrough_field(c): v for c, v in self.passthrough.items()},
        }  # fmt: skip

    def mark_duplicate(self, id_column: str, source: str) -> None:
        """Two output rows must never share a key: a repeated id gets its own, and no work."""
        dup = f"duplicate {id_column} {self.id!r}: only its first row is processed"
        self.error = dup if self.error is None else f"{dup}; {self.error}"
        self.id = f"{self.id}#dup@{source}"


# -- which files --------------------------------------------------------------------


def _split_name(path: str) -> tuple[str, str | None]:
    for ext, comp in _COMPRESSIONS.items():
        if path.endswith(ext):
            return path[: -len(ext)], comp
    return path, None


def _format_of(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    base, _ = _split_name(path)
    for ext, fmt in _EXTENSIONS.items():
        if base.endswith(ext):
            return fmt
    raise ManifestError(f"input.format=auto cannot tell the format of {path!r}; set input.format")


def _is_manifest(path: str) -> bool:
    return any(_split_name(path)[0].endswith(e) for e in _EXTENSIONS)


def _fingerprint(info: dict[str, Any]) -> str:
    """Size plus whatever version the store keeps (ETag, generation, mtime)."""
    version = [str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified") if k in info]
    return f"{info.get('size')}:{':'.join(version)}"


def list_files(cfg: InputConfig) -> tuple[Any, list[ManifestFile]]:
    """The manifest's files, sorted, with fingerprints: one listing, no reads."""
    import fsspec

    if redact_url(cfg.path) != cfg.path:
        # The path is written to the output (plans, ledger entries, ids of rows without one).
        raise ManifestError(
            f"input.path={redact_url(cfg.path)!r} carries credentials (user:password@ or a signed URL): they "
            "would be written to the output; give them in input.storage_options or the environment"
        )
    fs, root = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
    if any(c in root for c in "*?["):
        infos = retry.call("manifest_list", cfg.path, lambda: fs.glob(root, detail=True))
    else:
        # One info() instead of isdir()/exists(): those answer False when the request itself
        # fails, which would call a throttled manifest missing (exit 2, "fix it first").
        try:
            info = retry.call("manifest_list", cfg.path, lambda: fs.info(root))
        except Exception as e:
            if retry.is_missing(e):
                raise ManifestError(f"input.path={cfg.path!r} does not exist") from None
            raise
        if info.get("type") == "directory":
            found = retry.call("manifest_list", cfg.path, lambda: fs.find(root, detail=True))
            infos = {p: i for p, i in found.items() if _is_manifest(p)}
        else:
            infos = {root: info}
    infos = {p: i for p, i in infos.items() if i.get("type") != "directory"}
    if not infos:
        raise ManifestError(f"input.path={cfg.path!r} matches no manifest files")
    files = []
    for path in sorted(infos):
        fmt = _format_of(path, cfg.format)
        compression = _split_name(path)[1]
        if fmt == "parquet" and compression:
            raise ManifestError(f"{path!r}: parquet compresses itself; a compressed parquet file is not supported")
        files.append(ManifestFile(path, fmt, compression, _fingerprint(infos[path])))
    return fs, files


def manifest_files(cfg: InputConfig) -> tuple[Any, list[str]]:
    fs, files = list_files(cfg)
    return fs, [f.path for f in files]


# -- one row ------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _number(v: Any, name: str) -> float | None:
    if _missing(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} is not a number of seconds") from None


def _passthrough_value(v: Any) -> str | None:
    if _missing(v):
        return None
    return v if isinstance(v, str) else json.dumps(v, default=str)


def parse_row(rec: dict[str, Any], cfg: InputConfig, fallback_id: str) -> ManifestRow:
    raw_id = rec.get(cfg.id_column)
    row = ManifestRow(
        id=str(raw_id) if not _missing(raw_id) else fallback_id,
        passthrough={c: _passthrough_value(rec.get(c)) for c in cfg.passthrough},
    )
    if _missing(raw_id):
        row.error = f"missing {cfg.id_column!r}"
        return row
    image, video = rec.get(cfg.image_column), rec.get(cfg.video_column)
    try:
        if not _missing(image):
            images = [image] if isinstance(image, str) else image
            if not isinstance(images, list) or not images or not all(isinstance(u, str) and u for u in images):
                raise ValueError(f"{cfg.image_column!r} must be a URL or a non-empty list of URLs")
            row.images = images
        if not _missing(video):
            if not isinstance(video, str):
                raise ValueError(f"{cfg.video_column!r} must be a URL")
            row.video = video
        if row.images and row.video:
            raise ValueError(f"a row has either {cfg.image_column!r} or {cfg.video_column!r}, not both")
        if not row.images and not row.video:
            raise ValueError(f"no {cfg.image_column!r} or {cfg.video_column!r}")
        row.start = _number(rec.get(cfg.start_column), cfg.start_column)
        row.end = _number(rec.get(cfg.end_column), cfg.end_column)
        if row.start is not None and row.end is not None and row.end <= row.start:
            raise ValueError(f"{cfg.end_column}={row.end} is not after {cfg.start_column}={row.start}")
        row.clips = parse_clips(rec.get(cfg.clips_column), row.video, row.start, row.end)
        q = rec.get(cfg.question_column)
        row.question = None if _missing(q) else str(q)
    except ValueError as e:
        row.error = str(e)
    return row


# -- the rows of a split ------------------------------------------------------------


def _parse_json(line: bytes, line_no: int) -> dict[str, Any] | str:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"line {line_no} is not valid JSON: {getattr(e, 'msg', e)}"
    return rec if isinstance(rec, dict) else f"line {line_no} is not a JSON object"


def _jsonl_records(f, first_row: int, first_line: int, stop_byte: int | None) -> Iterator[tuple[int, int, Any]]:
    n, line_no, pos = first_row, first_line - 1, 0
    for line in f:
        if stop_byte is not None and pos >= stop_byte:
            return
        pos += len(line)
        line_no += 1
        if is_record(line):
            yield n, line_no, line
            n += 1


def _csv_records(f) -> Iterator[tuple[int, int, dict[str, Any]]]:
    import csv
    import io

    # csv.reader, not DictReader: DictReader skips empty rows unseen, so the line after one
    # could not be known. Records and lines counted as the planner (shards._scan_csv) does.
    reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
    header = next(reader, None)
    if header is None:
        return
    line, n = reader.line_num, 0
    for fields in reader:
        if fields:
            # Every value stays the string it is in the file: type guessing would turn id "007" into 7.
            yield n, line + 1, {k: (v if v != "" else None) for k, v in zip(header, fields)}
            n += 1
        line = reader.line_num


def _parquet_records(f, split: dict[str, Any], columns: list[str]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    present = [c for c in columns if c in pf.schema_arrow.names]
    n = split["rg_row_start"]
    for rg in split["row_groups"]:
        table = pf.read_row_group(rg, columns=present)
        for start in range(0, table.num_rows, 4096):
            for rec in table.slice(start, 4096).to_pylist():
                yield n, n + 1, rec
                n += 1


def split_rows(
    fs: Any, split: dict[str, Any], cfg: InputConfig, op: str = "manifest_read"
) -> Iterator[tuple[int, int, ManifestRow]]:
    """(record number, line number, row) for the records of a split's shards, in file order,
    each exactly once. A transient storage error reopens the file and goes on after the last
    record yielded; the attempts count from the last record that got through, so a long
    read survives many spread-out errors but not a store that stays down. Anything else,
    or attempts used up, is raised: rows are never skipped."""
    lo = min(s["row_start"] for s in split["shards"])
    hi = max(s["row_start"] + s["rows"] for s in split["shards"])
    attempts = retry.Attempts(op, f"{split['path']} (records {lo}-{hi - 1})")
    after = None
    while True:
        try:
            for n, line_no, row in _split_rows(fs, split, cfg, lo, hi, after):
                yield n, line_no, row
                after = n
                attempts.progressed()
            return
        except Exception as e:
            if not attempts.retry(e):
                raise


def _split_rows(fs: Any, split: dict[str, Any], cfg: InputConfig, lo: int, hi: int, after: int | None):
    path, fmt = split["path"], split["fmt"]
    with fs.open(path, "rb", compression=split["compression"]) as f:
        if fmt == "jsonl":
            if split.get("byte_start") is not None:
                f.seek(split["byte_start"])
                first = split["shards"][0]
                records = _jsonl_records(
                    f, first["row_start"], first["line_start"], split["byte_end"] - split["byte_start"]
                )
            else:
                records = _jsonl_records(f, 0, 1, None)
        elif fmt == "csv":
            records = _csv_records(f)
        else:
            columns = [cfg.id_column, cfg.image_column, cfg.video_column, cfg.question_column,
                       cfg.start_column, cfg.end_column, cfg.clips_column, *cfg.passthrough]  # fmt: skip
            records = _parquet_records(f, split, columns)
        last = lo - 1
        for n, line_no, rec in records:
            if n >= hi:
                return
            last = n
            if n < lo or (after is not None and n <= after):
                continue
            fallback = f"{path}#{line_no}"  # a stable id for rows that have none
            if fmt == "jsonl":
                rec = _parse_json(rec, line_no)
            if isinstance(rec, str):
                yield n, line_no, ManifestRow(id=fallback, error=rec)
            else:
                yield n, line_no, parse_row(rec, cfg, fallback)
        if last < hi - 1:
            # Fewer records than the plan counted: a cut read nothing below noticed, or a file
            # changed since it was planned. Either way the missing rows must not pass unseen.
            raise retry.ShortRead(f"{path}: the read ended after record {last}, the plan has records {lo}-{hi - 1}")


def read_manifest(cfg: InputConfig) -> list[ManifestRow]:
    """Every row of a small manifest, in file then line order; repeated ids after the first
    are invalid. For `validate` and tests: the job reads shards on workers instead."""
    fs, files = list_files(cfg)
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for file in files:
        for shard in cut_shards(fs, file, shard_rows=1 << 30):
            for _, line_no, row in split_rows(fs, split_of(file, [shard]), cfg):
                if row.id in seen:
                    row.mark_duplicate(cfg.id_column, f"{file.path}#{line_no}")
                seen.add(row.id)
                rows.append(row)
                if cfg.limit is not None and len(rows) >= cfg.limit:
                    return rows
    return rows


def split_of(file: ManifestFile, shards: list[Shard], **extra: Any) -> dict[str, Any]:
    """A read unit: consecutive shards of one file, read together by one reader."""
    seekable = file.seekable and all(s.byte_start is not None for s in shards)
    return {
        "path": file.path, "fmt": file.fmt, "compression": file.compression,
        "byte_start": shards[0].byte_start if seekable else None,
        "byte_end": shards[-1].byte_end if seekable else None,
        "row_groups": sorted({g for s in shards for g in s.row_groups}),
        "rg_row_start": min((s.rg_row_start for s in shards if s.row_groups), default=0),
        "shards": [{"id": s.id, "row_start": s.row_start, "rows": s.rows, "line_start": s.line_start, **extra}
                   for s in shards],
    }  # fmt: skip


def sample_manifest(cfg: InputConfig, preprocess: PreprocessConfig, n: int = 20) -> str:
    """`validate`'s report: parse the first rows and check their media URLs exist."""
    from internvl_batch.media.fetch import Fetcher

    rows = read_manifest(cfg.model_copy(update={"limit": n}))
    fetcher = Fetcher(preprocess.fetch)
    lines = [f"manifest: first {len(rows)} rows"]
    for row in rows:
        problem = row.error
        if problem is None:
            for url in row.images or [row.video]:
                # videos are read by range: their own limit
                limit = (preprocess.video.max_bytes, "video.max_bytes") if row.video else (None, "fetch.max_bytes")
                problem = fetcher.check(url, *limit)
                if problem:
                    break
        lines.append(f"  {row.id}: {row.media} {'ok' if problem is None else 'PROBLEM: ' + problem}")
    return "\n".join(lines)
