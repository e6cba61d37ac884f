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

from internvl_batch.status import SETTLED, Status
from internvl_batch.storage import retry

LEDGER = "_ledger"
STATE = "_state"
SUCCESS = "_SUCCESS"
CHECKSUM_KEY = b"internvl_batch.shard_checksum"
_KEY_COLUMNS = ["row", "task", "status", "run_id", "clip"]


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

    def write_ledger(self, shard: Any, tasks: list[str], counts: dict[str, dict[str, int]], run_id: str,
                     pairs: dict[str, int] | None = None) -> None:  # fmt: skip
        """The shard is done: every task's rows are in its parts (written before this).
        `counts`: output rows per task and status; `pairs`: (row, task) pairs per task, which
        differ only for clips (several rows per pair; then verify checks pairs)."""
        entry = {
            "shard": shard.id, "path": shard.path, "index": shard.index, "row_start": shard.row_start,
            "rows": shard.rows, "checksum": shard.checksum, "tasks": tasks, "counts": counts, "run_id": run_id,
        }  # fmt: skip
        if pairs is not None and any(pairs.get(t) != sum(counts.get(t, {}).values()) for t in tasks):
            entry["pairs"] = pairs
        self.write_json(f"{LEDGER}/{shard.id}.json", entry)

    def remove_ledger(self, shard: str) -> None:
        self.remove([self.path(f"{LEDGER}/{shard}.json")])

    # -- one shard's rows -------------------------------------------------------------
    def shard_keys(self, shard: str) -> pa.Table:
        """(row, task, status, run_id, clip, file, pos) of every row in the shard's parts."""
        tables = []
        for path in self.part_files(shard):
            t = self._read_part(path, _read_keys)
            n = t.num_rows
            t = t.append_column("file", pa.array([path] * n, pa.string()))
            tables.append(t.append_column("pos", pa.array(np.arange(n), pa.int64())))
        if not tables:
            return pa.table(
                {"row": pa.array([], pa.int64()), **{c: pa.array([], pa.string()) for c in _KEY_COLUMNS[1:4]},
                 "clip": pa.array([], pa.int32()), "file": pa.array([], pa.string()), "pos": pa.array([], pa.int64())}
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
        """Keep one answer per (row, task): ok beats a failure, then the newest run wins; for a
        video with clips, all of the winning run's clip rows (one per clip) and no others.
        Returns (rows dropped, the keys that remain)."""
        keys = self.shard_keys(shard)
        if keys.num_rows == 0:
            return 0, keys
        loser = _losers(keys)
        if not loser.any():
            return 0, keys
        losers = keys.filter(pa.array(loser))
        for path in set(losers["file"].to_pylist()):
            drop = pc.filter(losers["pos"], pc.equal(losers["file"], path)).to_numpy()
            table = self._read_part(path, pq.read_table)
            kept = table.filter(pa.array(~np.isin(np.arange(table.num_rows), drop)))
            if kept.num_rows:
                self.write_atomic(path.rsplit("/", 1)[-1], kept)  # the schema keeps its checksum metadata
            else:
                self.remove([path])
        return int(loser.sum()), keys.filter(pa.array(~loser))

    # -- the marker -------------------------------------------------------------------
    def holds_job_output(self) -> bool:
        """Whether a run has written here: every run records its settings first (`plan`), a
        finished one `_SUCCESS` last."""
        return any(self.fs.exists(self.path(n)) for n in (f"{STATE}/job.json", SUCCESS))

    def has_success(self) -> bool:
        return self.fs.exists(self.path(SUCCESS))

    def clear_success(self) -> None:
        self.remove([self.path(SUCCESS)])

    def write_success(self, summary: dict[str, Any]) -> None:
        self.write_atomic(SUCCESS, json.dumps(summary, indent=2, sort_keys=True).encode())


def _read_keys(f: Any) -> pa.Table:
    """A part's key columns; parts written before clips existed have no clip column (all null)."""
    names = pq.read_schema(f).names
    f.seek(0)
    t = pq.read_table(f, columns=[c for c in _KEY_COLUMNS if c in names])
    if "clip" not in names:
        t = t.append_column("clip", pa.nulls(t.num_rows, pa.int32()))
    return t.select(_KEY_COLUMNS)


def _losers(keys: pa.Table) -> np.ndarray:
    """Which key rows a reconcile drops (see reconcile_shard), as a mask over `keys`."""
    ok = pc.equal(keys["status"], Status.OK.value).to_numpy(zero_copy_only=False).astype(np.int8)
    runs, files = _rank(keys["run_id"]), _rank(keys["file"])
    # Per (row, task): ok first, then the newest run, then the later part file and row in it.
    ranked = np.lexsort((-np.arange(keys.num_rows), -files, -runs, -ok, _rank(keys["task"]), keys["row"].to_numpy()))
    rows, tasks = keys["row"].to_numpy()[ranked], _rank(keys["task"])[ranked]
    clips = keys["clip"].fill_null(-1).to_numpy(zero_copy_only=False)[ranked]
    group = np.cumsum(np.r_[True, (rows[1:] != rows[:-1]) | (tasks[1:] != tasks[:-1])]) - 1
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    loser = runs[ranked] != runs[ranked][first][group]  # only the winning run's rows of a pair stay
    # ...and one per clip, the first in rank order (rows without clips are clip -1: one per pair).
    stay = np.flatnonzero(~loser)
    by_clip = stay[np.lexsort((stay, clips[stay], group[stay]))]
    repeat = (group[by_clip][1:] == group[by_clip][:-1]) & (clips[by_clip][1:] == clips[by_clip][:-1])
    loser[by_clip[1:][repeat]] = True
    mask = np.zeros(keys.num_rows, bool)
    mask[ranked] = loser
    return mask


def _rank(column: pa.ChunkedArray) -> np.ndarray:
    """Dense ranks of a string column (ascending): lexsort keys for strings."""
    values = column.to_numpy(zero_copy_only=False).astype(str)
    return np.unique(values, return_inverse=True)[1]


def done_pairs(keys: pa.Table, settled_only: bool) -> set[tuple[int, str]]:
    """The (row, task) pairs a shard's parts answer; with `settled_only`, only pairs all of
    whose rows are settled (a video with one failed clip is redone whole)."""
    pairs = set(zip(keys["row"].to_pylist(), keys["task"].to_pylist()))
    if settled_only:
        unsettled = keys.filter(pc.invert(pc.is_in(keys["status"], pa.array(sorted(SETTLED), pa.string()))))
        pairs -= set(zip(unsettled["row"].to_pylist(), unsettled["task"].to_pylist()))
    return pairs


def pair_counts(keys: pa.Table) -> dict[str, int]:
    """{task: distinct rows}: (row, task) pairs per task of a table with row and task columns."""
    if not keys.num_rows:
        return {}
    grouped = keys.group_by("task").aggregate([("row", "count_distinct")])
    return dict(zip(grouped["task"].to_pylist(), grouped["row_count_distinct"].to_pylist()))


def status_counts(keys: pa.Table) -> dict[str, dict[str, int]]:
    """{task: {status: n}} of a table with task and status columns."""
    counts: dict[str, dict[str, int]] = {}
    if keys.num_rows:
        for r in keys.group_by(["task", "status"]).aggregate([("status", "count")]).to_pylist():
            counts.setdefault(r["task"], {})[r["status"]] = r["status_count"]
    return counts
