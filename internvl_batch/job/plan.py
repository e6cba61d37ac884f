"""The plan: which shards exist, which are done, which this run owes, and how to read them.

Everything here is O(files + shards) on the driver: one listing of the manifest, one of
the output's ledger and parts, a small cached plan per manifest file (planned on workers
when the file is new or changed), and row-level reads only for shards an earlier run
left partly done. A shard is:
  done     its ledger entry exists, for these rows (same checksum) and every task;
  todo     nothing of it is in the output;
  resume   some of it is: a crash cut it short, rows were appended to it, a task was
           added, or retry_failed redoes its failures (then its entry is removed first);
  changed  the ledger or its parts describe other rows than the manifest now holds:
           refused (input.on_change=refuse) or its rows are deleted and redone (redo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.config import JobConfig
from internvl_batch.job.output import STATE, OutputDir, done_pairs, pair_counts, shard_of_part, status_counts
from internvl_batch.job.readers import ManifestError, cut_shards, list_files, read_splits
from internvl_batch.job.shards import ManifestFile, Shard
from internvl_batch.job.sink import ShardTodo
from internvl_batch.status import SETTLED
from internvl_batch.storage import retry

log = logging.getLogger("internvl_batch")

Mapper = Callable[[Callable, list], Iterable]


class PlanError(ValueError):
    """The run can't start as configured (changed manifest, changed shard size); the message says why."""


@dataclass
class Plan:
    files: list[ManifestFile]
    shards: list[Shard]  # every shard in manifest order (input.limit applied)
    todo: dict[str, ShardTodo]
    splits: list[dict[str, Any]]  # read units covering the todo shards
    with_output: set[str]  # shards that have rows in the output (done or partial)
    counts: dict[str, int] = field(default_factory=dict)  # shards: total, done, todo, resume, redo

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def pairs_todo(self) -> int:
        return sum(t.expected for t in self.todo.values())

    def summary(self, tasks: list[str]) -> dict[str, Any]:
        return {
            "manifest_files": len(self.files), "manifest_rows": self.rows, "tasks": tasks,
            "shards": self.counts, "rows_x_tasks_to_do": self.pairs_todo,
            "rows_x_tasks_done": self.rows * len(tasks) - self.pairs_todo,
        }  # fmt: skip


def _file_plan_name(file: ManifestFile) -> str:
    return f"{STATE}/files/{file.key}.json"


def _plan_one(args: tuple) -> dict[str, Any]:
    """One file's shards, and the storage retries it took (a Ray task: the driver adds them up)."""
    fs_spec, file, shard_rows, prefix_rows = args
    import fsspec

    fs, _ = fsspec.core.url_to_fs(fs_spec[0], **fs_spec[1])
    shards = [s.to_dict() for s in cut_shards(fs, file, shard_rows, prefix_rows)]
    return {"shards": shards, "counters": retry.drain()}


def _check_settings(out: OutputDir, cfg: JobConfig, write: bool) -> None:
    """Shard ids mean row ranges of one size: a run with another size would not recognise its shards."""
    settings = {"shard_rows": cfg.input.shard_rows, "id_column": cfg.input.id_column}
    known = out.read_json(f"{STATE}/job.json")
    if known is None:
        if write:
            out.write_json(f"{STATE}/job.json", settings)
        return
    for key, value in settings.items():
        if known.get(key) != value:
            raise PlanError(
                f"input.{key}={value!r} but {out.url} was started with {known.get(key)!r}; "
                f"set input.{key}={known.get(key)!r} to resume it, or use a new output.path"
            )


def _shards_of_files(
    cfg: JobConfig,
    out: OutputDir,
    files: list[ManifestFile],
    ledger: dict[str, dict],
    mapper: Mapper,
    write: bool,
    local_bytes: int,
) -> list[Shard]:
    cached = out.read_jsons([_file_plan_name(f) for f in files])
    shard_rows = cfg.input.shard_rows
    per_file: dict[str, list[Shard]] = {}
    stale = []
    for f in files:
        c = cached.get(_file_plan_name(f))
        if c and c.get("fingerprint") == f.fingerprint and c.get("shard_rows") == shard_rows:
            per_file[f.path] = [Shard.from_dict(d) for d in c["shards"]]
        else:
            # A changed file: ask for the checksum of the rows its processed shards had, to
            # tell appended rows (the old rows unchanged) from changed ones. Those rows: the
            # ledger's, else the file's previous plan's (what a crashed shard's parts hold).
            old = c["shards"] if c and c.get("shard_rows") == shard_rows else []
            prefix = {d["index"]: d["rows"] for d in old}
            prefix.update({e["index"]: e["rows"] for e in ledger.values() if e["path"] == f.path})
            stale.append((f, prefix))
    if stale:
        log.info("plan: reading %d manifest file(s) to cut shards", len(stale))
        fs_spec = (cfg.input.path, cfg.input.storage_options)
        jobs = [(fs_spec, f, shard_rows, prefix) for f, prefix in stale]
        if sum(f.size or local_bytes + 1 for f, _ in stale) <= local_bytes:
            mapper = _threads  # small enough to cut here, without a cluster
        for (f, _), planned in zip(stale, mapper(_plan_one, jobs)):
            retry.record(planned["counters"])
            shards = planned["shards"]
            per_file[f.path] = [Shard.from_dict(d) for d in shards]
            if write:
                plan = {"fingerprint": f.fingerprint, "shard_rows": shard_rows, "shards": shards}
                out.write_json(_file_plan_name(f), plan)
    return [s for f in files for s in per_file[f.path]]


def _limit(shards: list[Shard], limit: int) -> list[Shard]:
    kept, left = [], limit
    for s in shards:
        if left <= 0:
            break
        if s.rows > left:
            s = Shard.from_dict({**s.to_dict(), "rows": left})
        kept.append(s)
        left -= s.rows
    return kept


def _threads(fn: Callable, items: list) -> list:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(fn, items))


def make_plan(cfg: JobConfig, out: OutputDir, mapper: Mapper = map, write: bool = True, local_bytes: int = 0) -> Plan:
    """`write=False` (a dry run) changes nothing under the output path. New or changed manifest
    files are cut into shards by `mapper` (Ray tasks in a run), or here in threads when they
    hold at most `local_bytes` in all."""
    tasks = [t.name for t in cfg.task]
    _check_settings(out, cfg, write)
    fs, files = list_files(cfg.input)
    ledger = out.read_ledger(out.ledger_ids())
    every = _shards_of_files(cfg, out, files, ledger, mapper, write, local_bytes)
    shards = every if cfg.input.limit is None else _limit(every, cfg.input.limit)
    parted = {shard_of_part(p) for p in out.part_files()}
    existing = {s.id for s in every}
    # Output of shards the manifest no longer has (a file removed, or shorter than it was).
    orphans = sorted((set(ledger) | parted) - existing)
    changed, todo, with_output, resume = [], {}, set(), []
    counts = {"total": len(shards), "done": 0, "todo": 0, "resume": 0, "redo": 0}
    for s in shards:
        entry = ledger.get(s.id)
        if entry is not None or s.id in parted:
            with_output.add(s.id)
        if entry is None:
            if s.id in parted:
                resume.append(s)
            else:
                todo[s.id] = ShardTodo(s, s.rows * len(tasks))
                counts["todo"] += 1
            continue
        # A run with input.limit leaves an entry for a shard's first rows, with the whole
        # shard's checksum: it is done for a shorter limit, resumed for a longer one.
        same = entry["checksum"] == s.checksum and entry["rows"] >= s.rows
        grown = entry["rows"] < s.rows and entry["checksum"] in (s.prefix_checksum, s.checksum)
        if not (same or grown):
            changed.append(s)
            continue
        failed = cfg.runtime.retry_failed and any(
            n for by_status in entry["counts"].values() for st, n in by_status.items() if st not in SETTLED
        )
        if same and set(tasks) <= set(entry["tasks"]) and not failed:
            counts["done"] += 1
        else:
            resume.append(s)
    # Parts made from other rows than the manifest now holds (left by a crash): changed too.
    with ThreadPoolExecutor(max_workers=8) as pool:
        sums = list(pool.map(lambda s: out.part_checksums(s.id), resume))
    for s, part_sums in zip(list(resume), sums):
        if part_sums - {s.checksum, s.prefix_checksum}:
            resume.remove(s)
            changed.append(s)
    if orphans or changed:
        _on_change(cfg, out, orphans, changed, ledger, write)
        for s in changed:
            todo[s.id] = ShardTodo(s, s.rows * len(tasks))
            with_output.discard(s.id)
        counts["redo"] = len(changed)
    for s, (expected, by_task, pairs) in zip(resume, _resume(out, resume, tasks, cfg.runtime.retry_failed, write)):
        if expected:
            todo[s.id] = ShardTodo(s, expected, resume=True)
            counts["resume"] += 1
        else:
            counts["done"] += 1
            if write:  # all its rows are there: a crash came between its last part and its entry
                out.write_ledger(s, tasks, by_task, "resumed", pairs)
    todo = {s.id: todo[s.id] for s in shards if s.id in todo}  # manifest order
    resume_ids = {sid for sid, t in todo.items() if t.resume}
    splits = read_splits(files, [t.shard for t in todo.values()], resume_ids)
    return Plan(files, shards, todo, splits, with_output, counts)


def _on_change(cfg: JobConfig, out: OutputDir, orphans: list[str], changed: list[Shard], ledger, write) -> None:
    what = [f"shard {s.id} of {s.path} (rows {s.row_start}-{s.row_start + s.rows - 1})" for s in changed[:5]]
    what += [
        f"shard {sid} of {ledger.get(sid, {}).get('path', 'a file no longer in the manifest')}" for sid in orphans[:5]
    ]
    n = len(changed) + len(orphans)
    if cfg.input.on_change == "refuse":
        raise PlanError(
            f"{n} shard(s) in {out.url} were made from manifest rows that have changed or are gone since: "
            f"{'; '.join(what)}{' ...' if n > len(what) else ''}. Their output would mix two versions of the "
            "manifest. Use a new output.path, restore the manifest, or set input.on_change=redo to delete "
            "and redo those shards."
        )
    log.warning("plan: redoing %d changed shard(s): %s", n, "; ".join(what))
    if write:
        for sid in [s.id for s in changed] + orphans:
            out.remove_ledger(sid)
            out.remove(out.part_files(sid))


def _resume(out: OutputDir, shards: list[Shard], tasks: list[str], retry_failed: bool, write: bool):
    """Pairs still to do, per shard with some output; each reads its own parts only."""

    def one(s: Shard) -> tuple[int, dict[str, dict[str, int]], dict[str, int]]:
        if write:
            if retry_failed:
                out.remove_ledger(s.id)  # first: a crash from here on leaves it partial, not done
            _, keys = out.reconcile_shard(s.id)
        else:
            keys = out.shard_keys(s.id)
        # Distinct pairs: a dry run reads parts unreconciled. Rows past an input.limit cut don't count.
        end = s.row_start + s.rows
        done = {(row, task) for row, task in done_pairs(keys, retry_failed) if row < end and task in tasks}
        return s.rows * len(tasks) - len(done), status_counts(keys), pair_counts(keys)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, shards))


__all__ = ["ManifestError", "Plan", "PlanError", "make_plan", "read_splits"]
