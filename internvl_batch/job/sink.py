"""The driver's end of the pipeline: result batches -> parts per shard -> a ledger entry
per shard as soon as it is complete.

Memory is bounded by the shards open at once (those whose rows are in flight), not by
the manifest: each open shard holds a bitmap of (row, task) pairs written this run and
its unflushed rows. The bitmap is also the exactly-once check: a pair that arrives twice
(Ray re-running a task whose outputs were partly delivered) is dropped, and a shard is
complete when its count reaches what the plan expects of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from internvl_batch.job.output import CHECKSUM_KEY, OutputDir, part_name, status_counts
from internvl_batch.job.shards import Shard

log = logging.getLogger("internvl_batch")


@dataclass(frozen=True)
class ShardTodo:
    """What this run owes one shard: `expected` (row, task) pairs, `resume` when the shard
    already has rows (a crash left it partial, or retry_failed redoes its failures)."""

    shard: Shard
    expected: int
    resume: bool = False


@dataclass
class _Open:
    todo: ShardTodo
    seen: np.ndarray
    tables: list[pa.Table] = field(default_factory=list)
    buffered: int = 0
    written: int = 0
    seq: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    last_commit: float = field(default_factory=time.monotonic)


class ShardSink:
    def __init__(
        self,
        out: OutputDir,
        schema: pa.Schema,
        run_id: str,
        tasks: list[str],
        todo: dict[str, ShardTodo],
        rows_per_file: int,
        flush_interval_s: float,
    ):
        self.out, self.schema, self.run_id, self.tasks = out, schema, run_id, tasks
        self.todo = todo
        self.rows_per_file, self.flush_interval_s = rows_per_file, flush_interval_s
        self._task_index = pa.array(tasks, pa.string())
        self._open: dict[str, _Open] = {}
        self.finished: set[str] = set()
        self.written = 0
        self.duplicates_dropped = 0

    @property
    def open_shards(self) -> int:
        return len(self._open)

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        shards = pc.unique(batch["shard"]).to_pylist()
        for sid in shards:
            part = batch if len(shards) == 1 else batch.filter(pc.equal(batch["shard"], sid))
            self._add(sid, part)
        self.flush_due()

    def _add(self, sid: str, part: pa.Table) -> None:
        if sid in self.finished:
            # Every pair of a finished shard is written: these are repeats (a re-run Ray task).
            self.duplicates_dropped += part.num_rows
            log.warning("shard %s: dropped %d repeated result row(s) after it finished", sid, part.num_rows)
            return
        st = self._open.get(sid) or self._start(sid)
        t = len(self.tasks)
        offsets = part["row"].to_numpy() - st.todo.shard.row_start
        tix = pc.index_in(part["task"], value_set=self._task_index).to_numpy(zero_copy_only=False)
        if ((offsets < 0) | (offsets >= st.todo.shard.rows)).any() or np.isnan(tix.astype(float)).any():
            raise RuntimeError(f"shard {sid}: a result row outside the shard's rows or tasks (a bug)")
        keys = offsets * t + tix.astype(np.int64)
        uniq, first = np.unique(keys, return_index=True)
        keep = np.sort(first[~st.seen[uniq]])
        if len(keep) < part.num_rows:
            self.duplicates_dropped += part.num_rows - len(keep)
            log.warning("shard %s: dropped %d repeated result row(s)", sid, part.num_rows - len(keep))
            part = part.take(pa.array(keep))
        st.seen[keys[keep]] = True
        for task, by_status in status_counts(part).items():
            mine = st.counts.setdefault(task, {})
            for status, n in by_status.items():
                mine[status] = mine.get(status, 0) + n
        st.tables.append(part)
        st.buffered += part.num_rows
        st.written += part.num_rows
        self.written += part.num_rows
        if st.written > st.todo.expected:
            raise RuntimeError(f"shard {sid}: {st.written} rows for {st.todo.expected} expected (a bug)")
        if st.written == st.todo.expected:
            self._finish(sid, st)
        elif st.buffered >= self.rows_per_file:
            self._commit(sid, st)

    def _start(self, sid: str) -> _Open:
        if sid in self.finished or sid not in self.todo:
            raise RuntimeError(f"result rows for shard {sid}, which this run does not owe (a bug)")
        st = _Open(self.todo[sid], np.zeros(self.todo[sid].shard.rows * len(self.tasks), bool))
        self._open[sid] = st
        return st

    def _commit(self, sid: str, st: _Open) -> None:
        if not st.buffered:
            return
        table = pa.concat_tables(st.tables).cast(self.schema)
        meta = {CHECKSUM_KEY: st.todo.shard.checksum.encode()}
        self.out.write_atomic(part_name(sid, self.run_id, st.seq), table, metadata=meta)
        st.seq += 1
        st.tables, st.buffered, st.last_commit = [], 0, time.monotonic()

    def _finish(self, sid: str, st: _Open) -> None:
        """The shard's last part, then (only then) its ledger entry."""
        self._commit(sid, st)
        counts = st.counts
        if st.todo.resume:
            # Earlier runs' rows count too, and a retried row supersedes its failed one.
            _, keys = self.out.reconcile_shard(sid)
            counts = status_counts(keys)
        self.out.write_ledger(st.todo.shard, self.tasks, counts, self.run_id)
        del self._open[sid]
        self.finished.add(sid)

    def flush_due(self) -> None:
        """Commit what has waited `flush_interval_s`: a crash then loses at most that much work."""
        now = time.monotonic()
        for sid, st in list(self._open.items()):
            if st.buffered and now - st.last_commit >= self.flush_interval_s:
                self._commit(sid, st)

    def flush_all(self) -> None:
        for sid, st in list(self._open.items()):
            self._commit(sid, st)

    def unfinished(self) -> list[str]:
        return sorted(set(self.todo) - self.finished)
