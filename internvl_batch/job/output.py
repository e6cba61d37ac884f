"""Parquet output: explicit schema, atomic part files, the resume index, `_SUCCESS` last.

Layout under `output.path`:
    part-<run_id>-<seq>.parquet   committed results; a file appears whole or not at all
    _SUCCESS                      JSON summary, written last; absent while a run is going

A row is keyed by (id, task). Resume reads the keys already committed and the next run
does only the rest. With `retry_failed`, rows whose status is not ok are redone and the
superseded rows are then removed from their part files (`reconcile`), so the finished
output holds every (id, task) exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from internvl_batch.status import Status

_KEY_COLUMNS = ["id", "task", "status", "run_id"]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class OutputDir:
    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        import fsspec

        self.url = path
        self.fs, self.root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def part_files(self) -> list[str]:
        return sorted(self.fs.glob(f"{self.root}/part-*.parquet"))

    def write_atomic(self, name: str, table: pa.Table) -> str:
        """Object stores publish an object only when its upload completes; on a local or
        POSIX filesystem we write a dot-file (which readers skip) and rename it."""
        final = f"{self.root}/{name}"
        target = f"{self.root}/.{name}.tmp" if self._local else final
        with self.fs.open(target, "wb") as f:
            pq.write_table(table, f)
        if target != final:
            self.fs.mv(target, final)
        return final

    # -- resume ---------------------------------------------------------------------
    def read_keys(self) -> pa.Table:
        tables = []
        for path in self.part_files():
            with self.fs.open(path, "rb") as f:
                t = pq.read_table(f, columns=_KEY_COLUMNS)
            t = t.append_column("file", pa.array([path] * t.num_rows, pa.string()))
            tables.append(t.append_column("row", pa.array(range(t.num_rows), pa.int64())))
        if not tables:
            empty = {c: pa.array([], pa.string()) for c in [*_KEY_COLUMNS, "file"]}
            return pa.table({**empty, "row": pa.array([], pa.int64())})
        return pa.concat_tables(tables)

    def done_keys(self, retry_failed: bool) -> set[tuple[str, str]]:
        keys = self.read_keys().to_pylist()
        return {(k["id"], k["task"]) for k in keys if not retry_failed or k["status"] == Status.OK}

    def reconcile(self) -> int:
        """Drop superseded rows (a key written twice: keep ok, else the newest run). Returns rows dropped."""
        keys = self.read_keys().to_pylist()
        best: dict[tuple[str, str], dict] = {}
        for k in keys:
            key = (k["id"], k["task"])
            cur = best.get(key)
            rank = (k["status"] == Status.OK, k["run_id"], k["file"])
            if cur is None or rank > (cur["status"] == Status.OK, cur["run_id"], cur["file"]):
                best[key] = k
        losers: dict[str, set[int]] = {}  # file -> row positions to drop
        for k in keys:
            if best[(k["id"], k["task"])] is not k:
                losers.setdefault(k["file"], set()).add(k["row"])
        for path, drop in losers.items():
            with self.fs.open(path, "rb") as f:
                table = pq.read_table(f)
            kept = table.filter(pa.array([i not in drop for i in range(table.num_rows)]))
            name = path.rsplit("/", 1)[-1]
            if kept.num_rows:
                self.write_atomic(name, kept)
            else:
                self.fs.rm(path)
        return sum(len(v) for v in losers.values())

    def status_counts(self) -> Counter:
        return Counter(self.read_keys()["status"].to_pylist())

    # -- the marker -----------------------------------------------------------------
    def clear_success(self) -> None:
        marker = f"{self.root}/_SUCCESS"
        if self.fs.exists(marker):
            self.fs.rm(marker)

    def write_success(self, summary: dict[str, Any]) -> None:
        with self.fs.open(f"{self.root}/_SUCCESS", "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)


class PartWriter:
    """Buffers result tables and commits them as part files of bounded size and age."""

    def __init__(self, out: OutputDir, schema: pa.Schema, run_id: str, rows_per_file: int, flush_interval_s: float):
        self.out, self.schema, self.run_id = out, schema, run_id
        self.rows_per_file, self.flush_interval_s = rows_per_file, flush_interval_s
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._seq = 0
        self._last_flush = time.monotonic()
        self.written = 0

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self.rows_per_file:
            buffered = pa.concat_tables(self._tables)
            self._commit(buffered.slice(0, self.rows_per_file))
            rest = buffered.slice(self.rows_per_file)
            self._tables, self._buffered = [rest], rest.num_rows
        if self._buffered and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        if self._buffered:
            self._commit(pa.concat_tables(self._tables))
            self._tables, self._buffered = [], 0

    def _commit(self, table: pa.Table) -> None:
        self.out.write_atomic(f"part-{self.run_id}-{self._seq:05d}.parquet", table.cast(self.schema))
        self._seq += 1
        self.written += table.num_rows
        self._last_flush = time.monotonic()
