"""The driver's end of the pipeline: result batches -> parts per shard -> a ledger entry
per shard as soon as it is complete.

Memory is bounded by the shards open at once (those whose rows are in flight), not by
the manifest: each open shard holds a bitmap of (row, task) pairs written this run and
its unflushed rows. The bitmap is also the exactly-once check: a pair that arrives twice
(Ray re-running a task whose outputs were partly delivered) is dropped, and a shard is
complete when its count reaches what the plan expects of it.

A video row with clips answers a pair with one output row per clip, keyed (row, clip,
task). Its clip rows wait in the shard's `pending` until every clip of the pair is in
(each row says how many, `num_clips`; a repeated clip is dropped) and only then join the
shard's rows as one complete pair. So a part never holds part of a pair: a run killed
mid-video leaves no clip rows of it, and the rerun redoes the pair whole. A failure of
the whole video (one row, clip null) completes its pair at once and drops its pending clips.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from internvl_batch.job.output import CHECKSUM_KEY, OutputDir, pair_counts, part_name, status_counts
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
class _Clips:
    """The clip rows of one (row, task) pair that arrived so far."""

    num_clips: int
    rows: dict[int, pa.Table] = field(default_factory=dict)


@dataclass
class _Open:
    todo: ShardTodo
    seen: np.ndarray
    tables: list[pa.Table] = field(default_factory=list)
    buffered: int = 0
    written: int = 0  # pairs complete (what the plan expects)
    seq: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # pairs complete per task
    pending: dict[int, _Clips] = field(default_factory=dict)  # by pair key: pairs with some clips in
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
        is_clip = part["clip"].is_valid().to_numpy(zero_copy_only=False)
        whole = np.flatnonzero(~is_clip)
        uniq, first = np.unique(keys[whole], return_index=True)
        keep = whole[np.sort(first[~st.seen[uniq]])]
        voided = sum(len(st.pending.pop(int(k)).rows) for k in keys[keep] if int(k) in st.pending)
        st.seen[keys[keep]] = True
        pieces = [part.take(pa.array(keep))] if len(keep) else []
        complete, taken = self._clips(st, part, keys, np.flatnonzero(is_clip)) if is_clip.any() else ([], 0)
        pieces += complete
        accepted = len(keep) + taken
        dropped = part.num_rows - accepted + voided
        if dropped:
            # voided: clips of a video whose whole-row failure arrived (a re-run task that failed where it had worked)
            self.duplicates_dropped += dropped
            log.warning("shard %s: dropped %d repeated result row(s)", sid, dropped)
        if not pieces:
            return
        rows = pa.concat_tables(pieces)
        for task, by_status in status_counts(rows).items():
            mine = st.counts.setdefault(task, {})
            for status, n in by_status.items():
                mine[status] = mine.get(status, 0) + n
        for task, n in pair_counts(rows).items():
            st.pairs[task] = st.pairs.get(task, 0) + n
        st.tables.append(rows)
        st.buffered += rows.num_rows
        st.written += len(keep) + len(complete)
        self.written += rows.num_rows
        if st.written > st.todo.expected:
            raise RuntimeError(f"shard {sid}: {st.written} rows for {st.todo.expected} expected (a bug)")
        if st.written == st.todo.expected:
            self._finish(sid, st)
        elif st.buffered >= self.rows_per_file:
            self._commit(sid, st)

    def _clips(self, st: _Open, part: pa.Table, keys: np.ndarray, rows: np.ndarray) -> tuple[list[pa.Table], int]:
        """Clip rows into their pairs' pending sets: (the pairs now complete, each one table;
        how many of these rows were taken, not repeats)."""
        clips, totals = part["clip"].to_numpy(zero_copy_only=False), part["num_clips"].to_numpy(zero_copy_only=False)
        complete, taken = [], 0
        for i in rows:
            k, clip = int(keys[i]), int(clips[i])
            if st.seen[k]:
                continue  # a repeat of a pair that is complete
            group = st.pending.setdefault(k, _Clips(int(totals[i])))
            if clip in group.rows or not 0 <= clip < group.num_clips:
                continue
            group.rows[clip] = part.slice(int(i), 1)
            taken += 1
            if len(group.rows) == group.num_clips:
                del st.pending[k]
                st.seen[k] = True
                complete.append(pa.concat_tables([group.rows[c] for c in range(group.num_clips)]))
        return complete, taken

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
        counts, pairs = st.counts, st.pairs
        if st.todo.resume:
            # Earlier runs' rows count too, and a retried row supersedes its failed one.
            _, keys = self.out.reconcile_shard(sid)
            counts, pairs = status_counts(keys), pair_counts(keys)
        self.out.write_ledger(st.todo.shard, self.tasks, counts, self.run_id, pairs)
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
