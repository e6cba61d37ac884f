"""The output directory: parquet parts per shard, the shard ledger, `_SUCCESS` last.

Layout under `output.path`:
    part-<shard>-<run>-<seq>.parquet   rows of one shard; a file appears whole or not at all
    _ledger/<shard>.json               written after the shard's last part: the shard is done
    _state/                            cached plans of manifest files, duplicate ids, job settings
    _SUCCESS                           JSON summary, written last; absent while a run is going

Which shards are done is a listing of `_ledger/` (O(shards)); only a shard a crash left
partly done is read row by row, and only its own parts. Readers of the output skip names
that start with `_` or `.` (pyarrow and Spark do), so `pq.read_table(output.path)` reads
exactly the results.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from internvl_batch.status import Status
from internvl_batch.storage import retry

LEDGER = "_ledger"
STATE = "_state"
SUCCESS = "_SUCCESS"
CHECKSUM_KEY = b"internvl_batch.shard_checksum"
_KEY_COLUMNS = ["row", "task", "status", "run_id"]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def part_name(shard: str, run_id: str, seq: int) -> str:
    return f"part-{shard}-{run_id}-{seq:04d}.parquet"


def shard_of_part(path: str) -> str:
    """The shard of a part file's name (run ids are `<time>-<hex>`, seq has no dash)."""
    stem = path.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
    return stem.rsplit("-", 3)[0]


class OutputDir:
    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        import fsspec

        self.url = path
        self.fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        self.root = root.rstrip("/")
        retry.call("output_write", self.url, lambda: self.fs.makedirs(self.root, exist_ok=True))
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # -- files ------------------------------------------------------------------------
    def part_files(self, shard: str | None = None) -> list[str]:
        pattern = self.path(f"part-{shard + '-' if shard else ''}*.parquet")
        return sorted(retry.call("output_list", pattern, lambda: self.fs.glob(pattern)))

    def write_atomic(self, name: str, data: pa.Table | bytes, metadata: dict[bytes, bytes] | None = None) -> str:
        """The whole object under its final name, or nothing; safe to repeat, so transient
        errors are retried (internvl_batch/retry.py). Object stores publish an object
        only when its upload completes; on a local or POSIX filesystem we write a dot-file
        (which readers skip) and rename it.

        The bytes are made before the first attempt and sent in one call: fsspec's file
        objects upload what they hold when closed, even when the `with` body raised, and a
        multipart upload whose middle part failed would then complete without it."""
        if not isinstance(data, bytes):
            buf = io.BytesIO()
            pq.write_table(data.replace_schema_metadata({**(data.schema.metadata or {}), **(metadata or {})}), buf)
            data = buf.getvalue()
        final = self.path(name)
        if not self.local:
            retry.call("output_write", final, lambda: self.fs.pipe_file(final, data))
            return final
        head, _, base = name.rpartition("/")
        tmp = self.path(f"{head + '/' if head else ''}.{base}.tmp")

        def write() -> None:
            if head:
                self.fs.makedirs(self.path(head), exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)

        retry.call("output_write", final, write)
        return final

    def write_json(self, name: str, obj: Any) -> None:
        self.write_atomic(name, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json(self, name: str) -> Any | None:
        """None when it does not exist; a transient error is retried, never taken for "missing"."""
        path = self.path(name)
        try:
            data = retry.call("output_read", path, lambda: self.fs.cat_file(path))
        except Exception as e:
            if retry.is_missing(e):
                return None
            raise
        return json.loads(data)

    def read_table(self, name: str, **kwargs: Any) -> pa.Table:
        """A parquet file under the output (pq.read_table's columns, filters ...), retried."""
        path = self.path(name)
        return retry.call("output_read", path, lambda: pq.read_table(path, filesystem=self.fs, **kwargs))

    def read_jsons(self, names: list[str]) -> dict[str, Any]:
        """Many small files at once (object stores: concurrent requests)."""
        if not names:
            return {}
        with ThreadPoolExecutor(max_workers=32) as pool:
            return dict(zip(names, pool.map(self.read_json, names)))

    def remove(self, paths: list[str]) -> None:
        """Remove these files; one already gone is fine. No exists() first: s3fs answers
        False when the check itself fails, which would keep a file that must go."""
        for p in paths:
            try:
                retry.call("output_remove", p, lambda p=p: self.fs.rm(p))
            except Exception as e:
                if not retry.is_missing(e):
                    raise

    # -- the ledger -------------------------------------------------------------------
    def ledger_ids(self) -> list[str]:
        pattern = self.path(f"{LEDGER}/*.json")
        found = retry.call("output_list", pattern, lambda: self.fs.glob(pattern))
        return sorted(p.rsplit("/", 1)[-1][: -len(".json")] for p in found)

    def read_ledger(self, shard_ids: list[str]) -> dict[str, dict]:
        entries = self.read_jsons([f"{LEDGER}/{s}.json" for s in shard_ids])
        return {name[len(LEDGER) + 1 : -len(".json")]: e for name, e in entries.items() if e is not None}

    def write_ledger(self, shard: Any, tasks: list[str], counts: dict[str, dict[str, int]], run_id: str) -> None:
        """The shard is done: every task's rows are in its parts (written before this)."""
        entry = {
            "shard": shard.id, "path": shard.path, "index": shard.index, "row_start": shard.row_start,
            "rows": shard.rows, "checksum": shard.checksum, "tasks": tasks, "counts": counts, "run_id": run_id,
        }  # fmt: skip
        self.write_json(f"{LEDGER}/{shard.id}.json", entry)

    def remove_ledger(self, shard: str) -> None:
        self.remove([self.path(f"{LEDGER}/{shard}.json")])

    # -- one shard's rows -------------------------------------------------------------
    def shard_keys(self, shard: str) -> pa.Table:
        """(row, task, status, run_id, file, pos) of every row in the shard's parts."""
        tables = []
        for path in self.part_files(shard):
            t = self._read_part(path, pq.read_table, columns=_KEY_COLUMNS)
            n = t.num_rows
            t = t.append_column("file", pa.array([path] * n, pa.string()))
            tables.append(t.append_column("pos", pa.array(np.arange(n), pa.int64())))
        if not tables:
            return pa.table(
                {"row": pa.array([], pa.int64()), **{c: pa.array([], pa.string()) for c in _KEY_COLUMNS[1:]},
                 "file": pa.array([], pa.string()), "pos": pa.array([], pa.int64())}
            )  # fmt: skip
        return pa.concat_tables(tables)

    def _read_part(self, path: str, read: Any, **kwargs: Any) -> Any:
        def attempt() -> Any:
            with self.fs.open(path, "rb") as f:
                return read(f, **kwargs)

        return retry.call("output_read", path, attempt)

    def part_checksums(self, shard: str) -> set[str]:
        sums = set()
        for path in self.part_files(shard):
            meta = self._read_part(path, pq.read_schema).metadata or {}
            sums.add(meta.get(CHECKSUM_KEY, b"").decode())
        return sums

    def reconcile_shard(self, shard: str) -> tuple[int, pa.Table]:
        """Keep one row per (row, task): ok beats a failure, then the newest run wins.
        Returns (rows dropped, the keys that remain)."""
        keys = self.shard_keys(shard)
        if keys.num_rows == 0:
            return 0, keys
        ranked = keys.append_column("ok", pc.equal(keys["status"], Status.OK.value)).sort_by(
            [("row", "ascending"), ("task", "ascending"), ("ok", "descending"),
             ("run_id", "descending"), ("file", "descending"), ("pos", "descending")]
        )  # fmt: skip
        rows, tasks = ranked["row"].to_numpy(), ranked["task"].to_numpy(zero_copy_only=False)
        loser = np.zeros(len(rows), bool)
        loser[1:] = (rows[1:] == rows[:-1]) & (tasks[1:] == tasks[:-1])
        if not loser.any():
            return 0, keys
        losers = ranked.filter(pa.array(loser))
        for path in set(losers["file"].to_pylist()):
            drop = pc.filter(losers["pos"], pc.equal(losers["file"], path)).to_numpy()
            table = self._read_part(path, pq.read_table)
            kept = table.filter(pa.array(~np.isin(np.arange(table.num_rows), drop)))
            if kept.num_rows:
                self.write_atomic(path.rsplit("/", 1)[-1], kept)  # the schema keeps its checksum metadata
            else:
                self.remove([path])
        return int(loser.sum()), ranked.filter(pa.array(~loser)).drop_columns(["ok"])

    # -- the marker -------------------------------------------------------------------
    def holds_job_output(self) -> bool:
        """Whether a run has written here: every run records its settings first (`plan`), a
        finished one `_SUCCESS` last."""
        return any(self.fs.exists(self.path(n)) for n in (f"{STATE}/job.json", SUCCESS))

    def clear_success(self) -> None:
        self.remove([self.path(SUCCESS)])

    def write_success(self, summary: dict[str, Any]) -> None:
        self.write_atomic(SUCCESS, json.dumps(summary, indent=2, sort_keys=True).encode())


def status_counts(keys: pa.Table) -> dict[str, dict[str, int]]:
    """{task: {status: n}} of a table with task and status columns."""
    counts: dict[str, dict[str, int]] = {}
    if keys.num_rows:
        for r in keys.group_by(["task", "status"]).aggregate([("status", "count")]).to_pylist():
            counts.setdefault(r["task"], {})[r["status"]] = r["status_count"]
    return counts
