"""Manifest rows -> typed work items; rows that can't be work become `invalid_row` results.

A manifest is JSONL, Parquet or CSV: one file, a directory or a glob, on any fsspec URL.
JSONL is parsed line by line so one broken line is one invalid row, not a failed job.
Every manifest row yields exactly one `ManifestRow` (valid or not), in a deterministic
order, so reruns see the same ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.config import InputConfig, PreprocessConfig
from internvl_batch.job.records import passthrough_field
from internvl_batch.status import Status

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}


class ManifestError(ValueError):
    """The manifest as a whole can't be read (missing path, unknown format)."""


@dataclass
class ManifestRow:
    id: str
    images: list[str] = field(default_factory=list)
    video: str | None = None
    start: float | None = None
    end: float | None = None
    question: str | None = None
    passthrough: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None  # set: the row is invalid and becomes an invalid_row result

    @property
    def media(self) -> str:
        return "video" if self.video else ("image" if self.images else "none")

    def item(self, tasks: list[str]) -> dict[str, Any]:
        """This row as an ITEM record (job.records) with the tasks left to do for it."""
        return {
            "id": self.id, "images": self.images or None, "video": self.video, "start": self.start,
            "end": self.end, "question": self.question, "media": self.media, "tasks": tasks,
            "status": Status.OK if self.error is None else Status.INVALID_ROW, "error": self.error,
            **{passthrough_field(c): v for c, v in self.passthrough.items()},
        }  # fmt: skip


def _format_of(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    for ext, fmt in _EXTENSIONS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return fmt
    raise ManifestError(f"input.format=auto cannot tell the format of {path!r}; set input.format")


def manifest_files(cfg: InputConfig) -> tuple[Any, list[str]]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
    if any(c in root for c in "*?["):
        files = sorted(fs.glob(root))
    elif fs.isdir(root):
        files = sorted(p for p in fs.find(root) if any(p.endswith((e, e + ".gz")) for e in _EXTENSIONS))
    elif fs.exists(root):
        files = [root]
    else:
        raise ManifestError(f"input.path={cfg.path!r} does not exist")
    if not files:
        raise ManifestError(f"input.path={cfg.path!r} matches no manifest files")
    return fs, files


def _records(fs: Any, path: str, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line/row number, record) pairs; a string record is a parse error."""
    if fmt == "jsonl":
        with fs.open(path, "rt", compression="infer") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, f"line {n} is not valid JSON: {e.msg}"
                    continue
                yield n, rec if isinstance(rec, dict) else f"line {n} is not a JSON object"
        return
    if fmt == "csv":
        import csv

        # Every value stays the string it is in the file: type guessing would turn id
        # "007" into 7.
        with fs.open(path, "rt", compression="infer", newline="") as f:
            for n, rec in enumerate(csv.DictReader(f), start=1):
                yield n, {k: (v if v != "" else None) for k, v in rec.items()}
        return
    import pyarrow.parquet as pq

    with fs.open(path, "rb", compression="infer") as f:
        table = pq.read_table(f)
    for n, rec in enumerate(table.to_pylist(), start=1):
        yield n, rec


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
        q = rec.get(cfg.question_column)
        row.question = None if _missing(q) else str(q)
    except ValueError as e:
        row.error = str(e)
    return row


def read_manifest(cfg: InputConfig) -> list[ManifestRow]:
    """All rows, in file then line order; duplicates after the first are invalid."""
    fs, files = manifest_files(cfg)
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for path in files:
        fmt = _format_of(path, cfg.format)
        for n, rec in _records(fs, path, fmt):
            fallback = f"{path}#{n}"  # a stable id for rows that have none
            if isinstance(rec, str):
                rows.append(ManifestRow(id=fallback, error=rec))
            else:
                row = parse_row(rec, cfg, fallback)
                if row.id in seen:  # valid or not: two output rows must never share a key
                    dup = f"duplicate {cfg.id_column} {row.id!r}: only its first row is processed"
                    row.error = dup if row.error is None else f"{dup}; {row.error}"
                    row.id = f"{row.id}#dup@{path}#{n}"
                seen.add(row.id)
                rows.append(row)
            if cfg.limit is not None and len(rows) >= cfg.limit:
                return rows
    return rows


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
                problem = fetcher.check(url)
                if problem:
                    break
        lines.append(f"  {row.id}: {row.media} {'ok' if problem is None else 'PROBLEM: ' + problem}")
    return "\n".join(lines)
