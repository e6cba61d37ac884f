"""What a run report shows, gathered from the output path alone: `_SUCCESS` (when the run
finished), the ledger (status counts of the done shards), the runs' timelines, and the parts.

Bounded for any output size: the parts are read a few columns at a time, batch by batch,
into fixed-size aggregates (tile and prompt-token counts as bincounts, the k slowest rows,
a few error samples per status); with more than `max_files` part files an evenly spread
sample of them is read, and the report says so.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from internvl_batch.job.output import LEDGER, OutputDir
from internvl_batch.observe.timeline import read_timeline
from internvl_batch.status import Status
from internvl_batch.storage.redact import redact_text

MAX_FILES = 200
LEDGER_LIMIT = 20_000  # entries read for the per-task breakdown (one small object each)
SLOWEST = 10
SAMPLES_PER_STATUS = 5
TOP_ERRORS = 10
_MAX_ERROR_KINDS = 1000  # distinct messages kept while counting; the rest count as "(other messages)"
_COLUMNS = ["id", "task", "status", "error", "num_tiles", "num_prompt_tokens", "preprocess_ms", "engine_ms",
            "finish_reason"]  # fmt: skip
# What makes two error messages differ without being another kind of error: the item's URL
# or path, numbers (sizes, offsets, line numbers), quoted values.
_URL_OR_PATH = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+|(?<![\w])/[^\s:;,'\"]+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def error_kind(message: str) -> str:
    """A message with what names one item (URLs, paths, numbers, quoted values) replaced:
    rows that failed the same way share it."""
    text = _URL_OR_PATH.sub(lambda m: "<url>:" if m.group(0).endswith(":") else "<url>", message or "")
    return _NUMBER.sub("N", _QUOTED.sub("'…'", text))[:300]


_MAX_TOKENS_BIN = 1 << 20  # a prompt longer than any model's context is not a row


@dataclass
class ReportData:
    url: str
    success: dict[str, Any] | None  # None: the run has not finished (or never started)
    status_by_task: dict[str, dict[str, int]] = field(default_factory=dict)
    status_source: str = ""
    shards_done: int = 0
    timeline: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    part_files: int = 0
    files_read: int = 0
    rows_read: int = 0
    tiles: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows (first task) by tile count
    prompt_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ok rows by prompt length
    slowest: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error_kinds: list[tuple[str, str, int]] = field(default_factory=list)  # (status, kind, rows), most first
    cut_by_max_tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # task: (finish_reason=length, ok)
    first_task: str | None = None  # the task whose rows the tiles histogram counts (each row once)

    @property
    def finished(self) -> bool:
        return self.success is not None

    @property
    def sampled(self) -> bool:
        return self.files_read < self.part_files

    @property
    def latest_run(self) -> str | None:
        if self.success:
            return self.success.get("run_id")
        return max(self.timeline, default=None)  # run ids start with their UTC start time


def _bincount_add(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values)
    if len(counts) > len(acc):
        acc = np.concatenate([acc, np.zeros(len(counts) - len(acc), np.int64)])
    acc[: len(counts)] += counts
    return acc


def _spread(items: list[str], n: int) -> list[str]:
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


class _Scan:
    def __init__(self, first_task: str | None):
        self.first_task = first_task
        self.tiles = np.zeros(0, np.int64)
        self.tokens = np.zeros(0, np.int64)
        self.slowest: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the k slowest
        self.errors: dict[str, list[dict[str, Any]]] = {}
        self.kinds: Counter[tuple[str, str]] = Counter()
        self.cut: Counter[str] = Counter()
        self.ok: Counter[str] = Counter()
        self.rows = 0
        self._seq = 0

    def add(self, b: pa.Table) -> None:
        self.rows += b.num_rows
        if self.first_task is None and b.num_rows:
            self.first_task = b["task"][0].as_py()
        ok = pc.equal(b["status"], Status.OK.value)
        one_task = b.filter(pc.and_(pc.equal(b["task"], self.first_task), pc.greater(b["num_tiles"], 0)))
        self.tiles = _bincount_add(self.tiles, one_task["num_tiles"].to_numpy(zero_copy_only=False).astype(np.int64))
        tokens = pc.drop_null(b.filter(ok)["num_prompt_tokens"]).to_numpy(zero_copy_only=False).astype(np.int64)
        self.tokens = _bincount_add(self.tokens, np.clip(tokens, 0, _MAX_TOKENS_BIN))
        total = pc.add(pc.fill_null(b["preprocess_ms"], 0.0), pc.fill_null(b["engine_ms"], 0.0))
        top = pc.select_k_unstable(total, k=min(SLOWEST, b.num_rows), sort_keys=[("dummy", "descending")])
        for r in b.take(top).append_column("total_ms", total.take(top)).to_pylist():
            self._seq += 1
            item = (r["total_ms"], self._seq, {k: r[k] for k in ("id", "task", "status", "num_tiles",
                                                                  "preprocess_ms", "engine_ms", "total_ms")})  # fmt: skip
            if len(self.slowest) < SLOWEST:
                heapq.heappush(self.slowest, item)
            elif item[0] > self.slowest[0][0]:
                heapq.heapreplace(self.slowest, item)
        done = b.filter(ok)
        for r in done.group_by("task").aggregate([("task", "count")]).to_pylist():
            self.ok[r["task"]] += r["task_count"]
        if "finish_reason" in b.column_names:
            cut = done.filter(pc.equal(done["finish_reason"], "length"))
            for r in cut.group_by("task").aggregate([("task", "count")]).to_pylist():
                self.cut[r["task"]] += r["task_count"]
        failed = b.filter(pc.invert(ok))
        by_message = failed.group_by(["status", "error"]).aggregate([("status", "count")])
        for r in by_message.to_pylist():
            key = (r["status"], error_kind(redact_text(r["error"] or "")))
            if key not in self.kinds and len(self.kinds) >= _MAX_ERROR_KINDS:
                key = (r["status"], "(other messages)")
            self.kinds[key] += r["status_count"]
        for status in pc.unique(failed["status"]).to_pylist():
            have = self.errors.setdefault(status, [])
            if len(have) < SAMPLES_PER_STATUS:
                some = failed.filter(pc.equal(failed["status"], status)).slice(0, SAMPLES_PER_STATUS - len(have))
                have += [{"id": r["id"], "task": r["task"], "error": redact_text(r["error"] or "")}
                         for r in some.select(["id", "task", "error"]).to_pylist()]  # fmt: skip


def _ledger_counts(out: OutputDir) -> tuple[dict[str, dict[str, int]], int, bool]:
    ids = out.ledger_ids()
    if len(ids) > LEDGER_LIMIT:
        return {}, len(ids), False
    counts: dict[str, dict[str, int]] = {}
    for entry in out.read_jsons([f"{LEDGER}/{s}.json" for s in ids]).values():
        for task, by_status in (entry or {}).get("counts", {}).items():
            mine = counts.setdefault(task, {})
            for status, n in by_status.items():
                mine[status] = mine.get(status, 0) + n
    return counts, len(ids), True


def collect(out: OutputDir, success: dict[str, Any] | None = None, max_files: int = MAX_FILES) -> ReportData:
    """`success`: the summary about to be written as `_SUCCESS` (the runner renders the
    report before it writes the marker, which stays the last file); else it is read."""
    data = ReportData(out.url, success if success is not None else out.read_json("_SUCCESS"))
    counts, data.shards_done, complete = _ledger_counts(out)
    if complete:
        data.status_by_task, data.status_source = counts, f"ledger: {data.shards_done} done shard(s)"
    data.timeline = read_timeline(out)
    parts = out.part_files()
    chosen = _spread(parts, max_files)
    data.part_files, data.files_read = len(parts), len(chosen)
    tasks = (data.success or {}).get("plan", {}).get("tasks") or []
    scan = _Scan(tasks[0] if tasks else None)
    by_task: dict[str, dict[str, int]] = {}
    for path in chosen:
        with out.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(
                batch_size=65_536, columns=[c for c in _COLUMNS if c in pf.schema_arrow.names]
            ):
                b = pa.Table.from_batches([batch])
                scan.add(b)
                if not complete:
                    for r in b.group_by(["task", "status"]).aggregate([("status", "count")]).to_pylist():
                        mine = by_task.setdefault(r["task"], {})
                        mine[r["status"]] = mine.get(r["status"], 0) + r["status_count"]
    if not complete:
        data.status_by_task = by_task
        data.status_source = f"part files: {data.files_read} of {data.part_files}"
    data.rows_read, data.tiles, data.prompt_tokens = scan.rows, scan.tiles, scan.tokens
    data.slowest = [item for _, _, item in sorted(scan.slowest, reverse=True)]
    data.errors, data.first_task = scan.errors, scan.first_task
    data.error_kinds = [(st, kind, n) for (st, kind), n in scan.kinds.most_common(TOP_ERRORS)]
    data.cut_by_max_tokens = {t: (scan.cut[t], scan.ok[t]) for t in sorted(scan.ok)}
    return data
