"""Tiny manifest files for data-plane tests, written together with what a reader must find
in them: each writer returns the (line number, record) of every record it wrote, counted
while writing, so tests check the planner and reader against that and not against
themselves. Plus a job config around them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from internvl_batch.config import InputConfig, JobConfig
from internvl_batch.job.readers import list_files
from internvl_batch.job.shards import ManifestFile

BLANK = object()  # a blank line (JSONL) or an empty row (CSV): never a record
TASKS = ("caption", "qa")


@dataclass
class Written:
    path: Path
    records: list[tuple[int, Any]]  # (1-based line of the record's first line, record) in file order

    @property
    def lines(self) -> list[int]:
        return [line for line, _ in self.records]


def record(i: int, **kw: Any) -> dict[str, Any]:
    """A valid image row; `id=None` leaves the id out (the row gets its fallback id)."""
    rec = {"id": f"r{i:03d}", "image": f"s3://bucket/{i}.jpg", "question": f"q{i}", **kw}
    return {k: v for k, v in rec.items() if v is not None}


def write_jsonl(
    path: Path, items: list[Any], *, newline: str = "\n", final_newline: bool = True, compress: bool = False
) -> Written:
    """items: a dict (a JSON line), a str (written verbatim: broken JSON, whitespace) or BLANK."""
    lines, records = [], []
    for item in items:
        text = "" if item is BLANK else item if isinstance(item, str) else json.dumps(item)
        lines.append(text)
        if item is not BLANK and text.strip():
            records.append((len(lines), item))
    data = newline.join(lines) + (newline if final_newline else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data.encode()) if compress else data.encode())
    return Written(path, records)


def append_jsonl(written: Written, items: list[dict[str, Any]]) -> Written:
    """Rows appended to a file that ends with a newline."""
    first = written.path.read_text().count("\n") + 1
    with written.path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in items))
    return Written(written.path, written.records + [(first + i, r) for i, r in enumerate(items)])


def write_csv(path: Path, header: list[str], rows: list[Any]) -> Written:
    """rows: a list of fields (quoted as needed: a field may hold newlines) or BLANK."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    line, records = 2, []
    for row in rows:
        if row is BLANK:
            buf.write("\n")
            line += 1
            continue
        start = buf.tell()
        writer.writerow(row)
        records.append((line, dict(zip(header, row))))
        line += buf.getvalue()[start:].count("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return Written(path, records)


def write_parquet(path: Path, records: list[dict[str, Any]], row_group_size: int) -> Written:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return Written(path, [(i + 1, r) for i, r in enumerate(records)])


def manifest_file(path: Path) -> tuple[Any, ManifestFile]:
    """The filesystem and ManifestFile the job would list for one local file."""
    fs, [file] = list_files(InputConfig(path=str(path)))
    return fs, file


def job_config(manifest: Any, out: Any, *, tasks: tuple[str, ...] = TASKS, **sections: dict[str, Any]) -> JobConfig:
    cfg: dict[str, Any] = {
        "input": {"path": str(manifest), "shard_rows": 4},
        "model": {"path": "unused"},
        "task": [{"name": t, "prompt": f"{t}?"} for t in tasks],
        "runtime": {},
        "output": {"path": str(out), "rows_per_file": 1000, "flush_interval_s": 1e9},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return JobConfig.model_validate(cfg)
