"""ShardSink: result batches -> parts per shard -> a ledger entry once a shard is complete,
each (row, task) exactly once."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from internvl_batch.job import sink as sink_module
from internvl_batch.job.output import CHECKSUM_KEY, OutputDir, part_name, shard_of_part
from internvl_batch.job.shards import Shard
from internvl_batch.job.sink import ShardSink, ShardTodo
from internvl_batch.records import output_schema
from internvl_batch.status import Status
from tests.support.results import RUN1, RUN2, read_parts, result, table, write_part

TASKS = ["caption", "qa"]
A = Shard("0123456789ab-000000", "/m/a.jsonl", 0, 0, 5, 1, "sum-a", 0, 100)
B = Shard("0123456789ab-000001", "/m/a.jsonl", 1, 5, 3, 7, "sum-b", 100, 160)


def pairs(shard: Shard, tasks=TASKS) -> list[tuple[int, str]]:
    return [(r, t) for r in range(shard.row_start, shard.row_start + shard.rows) for t in tasks]


def rows_of(shard: Shard, keys, run_id: str = RUN1, status_of=lambda r, t: Status.OK) -> list[dict]:
    return [result(shard.id, r, t, run_id, status_of(r, t)) for r, t in keys]


def make_sink(out: OutputDir, todo: dict[str, ShardTodo], rows_per_file: int = 1000, flush_interval_s: float = 1e9):
    return ShardSink(out, output_schema(), RUN1, TASKS, todo, rows_per_file, flush_interval_s)


def fresh(*shards: Shard) -> dict[str, ShardTodo]:
    return {s.id: ShardTodo(s, s.rows * len(TASKS)) for s in shards}


@pytest.fixture
def out(tmp_path) -> OutputDir:
    return OutputDir(str(tmp_path / "out"))


def part_names(out: OutputDir, shard: Shard) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in out.part_files(shard.id)]


def status_of(r: int, t: str) -> str:
    return [Status.OK, Status.FETCH_ERROR, Status.OK, Status.ENGINE_ERROR][(r + len(t)) % 4]


def counts_of(rows: list[dict]) -> dict[str, dict[str, int]]:
    c: dict[str, Counter] = {}
    for r in rows:
        c.setdefault(r["task"], Counter())[r["status"]] += 1
    return {t: dict(v) for t, v in c.items()}


# -- parts ---------------------------------------------------------------------------------


def test_parts_hold_one_shard_each(out):
    sink = make_sink(out, fresh(A, B), rows_per_file=3)
    a, b = rows_of(A, pairs(A), status_of=status_of), rows_of(B, pairs(B), status_of=status_of)
    mixed = [x for pair in zip(a, b) for x in pair] + a[len(b) :]  # batches mixing both shards
    for i in range(0, len(mixed), 4):
        sink.add(table(mixed[i : i + 4]))
    assert sink.unfinished() == [] and sink.open_shards == 0 and sink.written == len(a) + len(b)
    for shard, rows in ((A, a), (B, b)):
        names = part_names(out, shard)
        assert names == [part_name(shard.id, RUN1, i) for i in range(len(names))]
        got = read_parts(out, shard.id)
        assert all(r["shard"] == shard.id == shard_of_part(n) for n in names for r in got)
        assert sorted((r["row"], r["task"], r["status"]) for r in got) == sorted(
            (r["row"], r["task"], r["status"]) for r in rows
        )
        assert out.part_checksums(shard.id) == {shard.checksum}


def test_rows_per_file(out):
    sink = make_sink(out, fresh(A), rows_per_file=3)
    rows = rows_of(A, pairs(A))
    for i, row in enumerate(rows, 1):
        sink.add(table([row]))
        if i < len(rows):
            assert len(out.part_files(A.id)) == i // 3  # only whole files before the end
    sizes = []
    for path in out.part_files(A.id):
        with out.fs.open(path, "rb") as f:
            sizes.append(pq.read_metadata(f).num_rows)
    assert sizes == [3, 3, 3, 1]  # the last part holds what completed the shard


def test_written_parts_have_the_output_schema(out):
    passthrough = ("source",)
    schema = output_schema(passthrough)
    sink = ShardSink(out, schema, RUN1, TASKS, fresh(B), 1000, 1e9)
    rows = [result(B.id, r, t, RUN1, status_of(r, t), passthrough) for r, t in pairs(B)]
    sink.add(table(rows, passthrough))
    [path] = out.part_files(B.id)
    with out.fs.open(path, "rb") as f:
        back = pq.read_table(f)
    assert back.schema.equals(schema, check_metadata=False)
    assert back.schema.metadata[CHECKSUM_KEY] == B.checksum.encode()
    assert back.to_pylist() == rows


class Clock:
    """The sink's `time`: starts at the real clock (a shard's age starts there too)."""

    def __init__(self):
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


def test_flush_interval(out, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(sink_module, "time", clock)
    sink = make_sink(out, fresh(A, B), rows_per_file=1000, flush_interval_s=10)
    a, b = rows_of(A, pairs(A)), rows_of(B, pairs(B))
    sink.add(table(a[:1] + b[:1]))
    clock.now += 9
    sink.add(table(a[1:2]))
    assert out.part_files() == []
    clock.now += 2  # 11 s since the shards opened
    sink.flush_due()
    assert len(out.part_files(A.id)) == len(out.part_files(B.id)) == 1
    sink.add(table(a[2:3]))
    clock.now += 9  # the age restarts at the commit
    sink.flush_due()
    assert len(out.part_files(A.id)) == 1
    clock.now += 2
    sink.add(table(b[1:2]))  # an add commits what is due, of every shard
    assert len(out.part_files(A.id)) == len(out.part_files(B.id)) == 2
    assert len(read_parts(out, A.id)) == 3 and len(read_parts(out, B.id)) == 2
    sink.add(table(a[3:4]))
    sink.flush_all()
    assert len(read_parts(out, A.id)) == 4 and sink.unfinished() == [A.id, B.id]
    assert out.ledger_ids() == []


# -- the ledger ------------------------------------------------------------------------------


def test_ledger_entry_follows_the_shards_last_part(out, monkeypatch):
    events = []
    real_atomic, real_ledger = out.write_atomic, out.write_ledger

    def atomic(name, *a, **k):
        events.append(("part", shard_of_part(name)))
        return real_atomic(name, *a, **k)

    def ledger(shard, *a, **k):
        events.append(("ledger", shard.id))
        return real_ledger(shard, *a, **k)

    monkeypatch.setattr(out, "write_atomic", atomic)
    monkeypatch.setattr(out, "write_ledger", ledger)
    sink = make_sink(out, fresh(A, B), rows_per_file=4)
    a, b = rows_of(A, pairs(A), status_of=status_of), rows_of(B, pairs(B), status_of=status_of)
    sink.add(table(a[:7] + b[:2]))
    assert out.ledger_ids() == [] and sink.unfinished() == [A.id, B.id]
    sink.add(table(b[2:]))
    assert out.ledger_ids() == [B.id] and sink.finished == {B.id} and sink.open_shards == 1
    sink.add(table(a[7:]))
    assert out.ledger_ids() == [A.id, B.id] and sink.unfinished() == []
    for shard in (A, B):
        last = max(i for i, e in enumerate(events) if e == ("part", shard.id))
        assert events.index(("ledger", shard.id)) == last + 1
    ledger_a = out.read_ledger([A.id])[A.id]
    assert ledger_a == {
        "shard": A.id, "path": A.path, "index": A.index, "row_start": A.row_start, "rows": A.rows,
        "checksum": A.checksum, "tasks": TASKS, "counts": counts_of(a), "run_id": RUN1,
    }  # fmt: skip
    assert out.read_ledger([B.id])[B.id]["counts"] == counts_of(b)
    assert sum(sum(c.values()) for c in ledger_a["counts"].values()) == A.rows * len(TASKS)


# -- exactly once ------------------------------------------------------------------------------


def test_repeated_rows_are_dropped_and_counted(out):
    sink = make_sink(out, fresh(A), rows_per_file=2)
    a = rows_of(A, pairs(A))
    sink.add(table([a[0], a[1], a[0]]))  # within a batch
    sink.add(table(a[:4]))  # across batches, after a[:2] went to a part
    assert sink.duplicates_dropped == 3 and sink.written == 4
    sink.add(table(a[3:]))
    assert sink.duplicates_dropped == 4 and sink.written == len(a) and sink.unfinished() == []
    got = read_parts(out, A.id)
    assert sorted((r["row"], r["task"]) for r in got) == pairs(A)
    assert out.read_ledger([A.id])[A.id]["counts"] == {"caption": {"ok": 5}, "qa": {"ok": 5}}


def test_repeated_rows_after_the_shard_finished_are_dropped(out):
    """Ray may re-deliver a retried task's rows after the shard got everything."""
    sink = make_sink(out, fresh(A, B))
    a = rows_of(A, pairs(A))
    sink.add(table(a))
    entry = out.read_ledger([A.id])[A.id]
    sink.add(table(a[2:4] + rows_of(B, pairs(B)[:1])))
    assert sink.duplicates_dropped == 2 and sink.written == len(a) + 1
    assert len(read_parts(out, A.id)) == len(a) and out.read_ledger([A.id])[A.id] == entry


@pytest.mark.parametrize(
    "bad",
    [
        result("0123456789ab-000009", 0, "caption", RUN1),  # a shard this run does not owe
        result(A.id, A.row_start - 1, "caption", RUN1),
        result(B.id, B.row_start + B.rows, "caption", RUN1),  # the next shard's first row
        result(A.id, 0, "other-task", RUN1),
    ],
    ids=["unknown-shard", "row-before", "row-after", "unknown-task"],
)
def test_rows_the_run_does_not_owe_raise(out, bad):
    sink = make_sink(out, fresh(A, B))
    with pytest.raises(RuntimeError, match="a bug"):
        sink.add(table([bad]))


def test_more_pairs_than_expected_raise(out):
    """A resumed shard owes fewer pairs; a new pair beyond them is a planning bug."""
    sink = make_sink(out, {A.id: ShardTodo(A, 2, resume=True)})
    a = rows_of(A, pairs(A))
    with pytest.raises(RuntimeError, match="3 rows for 2 expected"):
        sink.add(table(a[:3]))


def test_empty_batch(out):
    sink = make_sink(out, fresh(A))
    sink.add(table([]))
    sink.flush_all()
    assert out.part_files() == [] and sink.written == 0 and sink.unfinished() == [A.id]


# -- resume ------------------------------------------------------------------------------------


def test_resume_counts_earlier_rows_and_supersedes_retried_failures(out):
    """Run 1 left part of A (some failed); run 2 retries the failures and does the rest."""
    earlier = rows_of(A, pairs(A)[:6], RUN1, status_of)
    write_part(out, A.id, RUN1, 0, earlier, A.checksum)
    failed = [(r["row"], r["task"]) for r in earlier if r["status"] != Status.OK]
    todo = failed + pairs(A)[6:]
    sink = ShardSink(out, output_schema(), RUN2, TASKS, {A.id: ShardTodo(A, len(todo), resume=True)}, 1000, 1e9)
    retried = rows_of(A, todo, RUN2, lambda r, t: Status.ENGINE_ERROR if r == 4 else Status.OK)
    sink.add(table(retried[:2]))
    assert out.ledger_ids() == []
    sink.add(table(retried[2:]))
    assert sink.unfinished() == []
    got = read_parts(out, A.id)
    assert sorted((r["row"], r["task"]) for r in got) == pairs(A)  # one row per pair after reconcile
    final = {(r["row"], r["task"]): r for r in earlier if r["status"] == Status.OK}
    final.update({(r["row"], r["task"]): r for r in retried})
    assert {(r["row"], r["task"], r["status"], r["run_id"]) for r in got} == {
        (r["row"], r["task"], r["status"], r["run_id"]) for r in final.values()
    }
    entry = out.read_ledger([A.id])[A.id]
    assert entry["counts"] == counts_of(list(final.values())) and entry["run_id"] == RUN2
    assert out.part_checksums(A.id) == {A.checksum}


# -- clips: several rows per pair --------------------------------------------------------------


def clip_rows(shard: Shard, row: int, n: int, run_id: str = RUN1, tasks=TASKS, status=Status.OK) -> list[dict]:
    return [
        result(shard.id, row, t, run_id, status, clip=c, clip_start=2.0 * c, clip_end=2.0 * c + 2, num_clips=n)
        for c in range(n) for t in tasks
    ]  # fmt: skip


def test_clip_rows_are_one_pair_each_and_exactly_once(out):
    sink = make_sink(out, fresh(A), rows_per_file=2)
    video = clip_rows(A, 0, 4)  # row 0 is a video of 4 clips: 8 rows for its 2 pairs
    others = rows_of(A, pairs(A)[2:])
    sink.add(table(video[:3] + others[:3]))
    sink.add(table(video[1:5] + video[:1]))  # repeats across and within batches
    sink.flush_all()
    # A part never holds part of a pair: no clip row of row 0 is written while some are missing.
    assert sorted((r["row"], r["task"]) for r in read_parts(out, A.id)) == [(1, "caption"), (1, "qa"), (2, "caption")]
    assert sink.duplicates_dropped == 3
    sink.add(table(video[5:] + video[6:] + others[3:]))
    assert sink.unfinished() == [] and sink.duplicates_dropped == 5
    got = read_parts(out, A.id)
    assert sorted((r["row"], r["clip"], r["task"]) for r in got) == sorted(
        [(0, c, t) for c in range(4) for t in TASKS] + [(r, None, t) for r, t in pairs(A)[2:]],
        key=str,
    )
    entry = out.read_ledger([A.id])[A.id]
    assert entry["counts"] == {"caption": {"ok": 8}, "qa": {"ok": 8}}  # rows, clips counted
    assert entry["pairs"] == {"caption": 5, "qa": 5}  # what verify checks against the shard's rows


def test_a_run_that_ends_mid_video_commits_none_of_its_clips(out):
    sink = make_sink(out, fresh(A), rows_per_file=1, flush_interval_s=0)
    video = clip_rows(A, 3, 5)  # clip 0 caption, clip 0 qa, clip 1 caption, ...
    sink.add(table(video[:7] + rows_of(A, [(0, "caption")])))  # clips 0-3 of caption, 0-2 of qa
    sink.flush_due()
    sink.flush_all()  # what a run does when it ends early
    assert [(r["row"], r["task"]) for r in read_parts(out, A.id)] == [(0, "caption")]
    assert out.ledger_ids() == []


def test_a_whole_video_failure_voids_its_pending_clips(out):
    """A re-run task failed to open the video where the first attempt had delivered clips."""
    sink = make_sink(out, fresh(B))
    partial = clip_rows(B, 5, 3)[:2]  # clip 0, both tasks
    failed = [result(B.id, 5, t, RUN2, Status.FETCH_ERROR) for t in TASKS]
    late = clip_rows(B, 5, 3)[2:]  # clips 1 and 2 of the first attempt, after the failure
    sink.add(table(partial + failed + late + rows_of(B, pairs(B)[2:])))
    assert sink.unfinished() == [] and sink.duplicates_dropped == 2 + 4
    video = [r for r in read_parts(out, B.id) if r["row"] == 5]
    assert [(r["clip"], r["status"]) for r in video] == [(None, Status.FETCH_ERROR)] * 2
