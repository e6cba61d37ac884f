"""make_plan over real local manifests and outputs (mapper=map, no Ray): which shards are
done, todo, resumed or changed, what each still owes, and how they are read.

Outputs are made by `run_local` (tests/support/results.py): the real reader and sink, a
stand-in inference. The oracle for what a shard owes is its parts, read back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from internvl_batch.job.output import OutputDir
from internvl_batch.job.plan import Plan, PlanError, make_plan
from internvl_batch.status import Status
from tests.support.manifests import (
    BLANK,
    TASKS,
    append_jsonl,
    job_config,
    record,
    write_csv,
    write_jsonl,
    write_parquet,
)
from tests.support.results import RUN1, RUN2, RUN3, read_parts, run_local

ROWS = 10  # shard_rows=4: shards of 4, 4 and 2 rows


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_jsonl(tmp_path / "m.jsonl", [record(i) for i in range(ROWS)]).path


@pytest.fixture
def out(tmp_path) -> OutputDir:
    return OutputDir(str(tmp_path / "out"))


def config(manifest: Path, out: OutputDir, tasks=TASKS, **sections: dict[str, Any]):
    return job_config(manifest, out.url, tasks=tasks, **sections)


def snapshot(out: OutputDir) -> dict[str, bytes]:
    root = Path(out.root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def results(out: OutputDir) -> dict[str, bytes]:
    """The parts and the ledger (a plan may cache file plans under _state/ even when it refuses)."""
    return {k: v for k, v in snapshot(out).items() if not k.startswith("_state/")}


def pairs_in_output(out: OutputDir, shard: str, tasks=TASKS, ok_only: bool = False) -> set[tuple[int, str]]:
    return {
        (r["row"], r["task"])
        for r in read_parts(out, shard)
        if r["task"] in tasks and (not ok_only or r["status"] == Status.OK)
    }


def check_owed(plan: Plan, out: OutputDir, tasks=TASKS, ok_only: bool = False) -> None:
    """Every todo shard owes exactly the pairs its parts lack."""
    for t in plan.todo.values():
        done = pairs_in_output(out, t.shard.id, tasks, ok_only)
        assert t.expected == t.shard.rows * len(tasks) - len(done), t.shard.id
        assert t.resume == bool(out.part_files(t.shard.id)), t.shard.id


def check_complete(out: OutputDir, plan: Plan, tasks=TASKS) -> None:
    """Every shard's parts hold each of its pairs once, and its entry says so."""
    ledger = out.read_ledger([s.id for s in plan.shards])
    for s in plan.shards:
        rows = [(r["row"], r["task"]) for r in read_parts(out, s.id) if r["task"] in tasks]
        assert sorted(rows) == [(n, t) for n in range(s.row_start, s.row_start + s.rows) for t in sorted(tasks)]
        entry = ledger[s.id]
        assert (entry["rows"], entry["checksum"]) == (s.rows, s.checksum)
        assert all(sum(entry["counts"][t].values()) == s.rows for t in tasks)


def fail_rows(*rows: int):
    return lambda item, task: Status.ENGINE_ERROR if item["row"] in rows else Status.OK


# -- fresh, done, partial ----------------------------------------------------------------------


def test_fresh_output_is_all_todo(manifest, out):
    plan = make_plan(config(manifest, out), out)
    assert [s.rows for s in plan.shards] == [4, 4, 2] and plan.rows == ROWS
    assert list(plan.todo) == [s.id for s in plan.shards]
    assert all(t.expected == t.shard.rows * 2 and not t.resume for t in plan.todo.values())
    assert plan.counts == {"total": 3, "done": 0, "todo": 3, "resume": 0, "redo": 0}
    assert plan.with_output == set() and plan.pairs_todo == ROWS * 2
    assert plan.summary(list(TASKS)) == {
        "manifest_files": 1, "manifest_rows": ROWS, "tasks": list(TASKS), "shards": plan.counts,
        "rows_x_tasks_to_do": ROWS * 2, "rows_x_tasks_done": 0,
    }  # fmt: skip
    assert out.read_json("_state/job.json") == {"shard_rows": 4, "id_column": "id"}


def test_a_finished_run_leaves_nothing_to_do(manifest, out):
    cfg = config(manifest, out)
    run = run_local(cfg, out)
    check_complete(out, run.plan)
    plan = make_plan(cfg, out)
    assert plan.todo == {} and plan.splits == [] and plan.pairs_todo == 0
    assert plan.counts == {"total": 3, "done": 3, "todo": 0, "resume": 0, "redo": 0}
    assert plan.with_output == {s.id for s in plan.shards}
    assert plan.summary(list(TASKS))["rows_x_tasks_done"] == ROWS * 2


@pytest.mark.parametrize("crash_after", [1, 5, 8, 9, 13])
def test_a_crashed_run_resumes_what_is_missing(manifest, out, crash_after):
    cfg = config(manifest, out, output={"rows_per_file": 2})
    run_local(cfg, out, RUN1, crash_after=crash_after)
    plan = make_plan(cfg, out)
    finished = set(out.ledger_ids())
    parted = {s.id for s in plan.shards if out.part_files(s.id)}
    assert set(plan.todo) == {s.id for s in plan.shards} - finished
    assert {sid for sid, t in plan.todo.items() if t.resume} == parted - finished
    assert plan.with_output == parted | finished
    check_owed(plan, out)
    assert plan.counts["resume"] == len(parted - finished) and plan.counts["done"] == len(finished)
    run_local(cfg, out, RUN2)
    check_complete(out, plan)
    assert make_plan(cfg, out).todo == {}


def test_a_crash_between_last_part_and_entry(manifest, out):
    """All its rows are in parts, its entry missing: done, and the entry is written then."""
    cfg = config(manifest, out)
    run = run_local(cfg, out, RUN1)
    first = run.plan.shards[0].id
    out.remove_ledger(first)
    before = snapshot(out)
    dry = make_plan(cfg, out, write=False)
    assert snapshot(out) == before and dry.todo == {} and dry.counts["done"] == 3
    plan = make_plan(cfg, out)
    assert plan.todo == {} and plan.counts["done"] == 3
    check_complete(out, plan)


def test_an_added_task_resumes_every_shard(manifest, out):
    run_local(config(manifest, out, tasks=("caption",)), out, RUN1)
    cfg = config(manifest, out)
    plan = make_plan(cfg, out)
    assert all(t.resume and t.expected == t.shard.rows for t in plan.todo.values())
    assert plan.counts == {"total": 3, "done": 0, "todo": 0, "resume": 3, "redo": 0}
    run = run_local(cfg, out, RUN2)
    assert {tuple(i["tasks"]) for i in run.items} == {("qa",)}
    check_complete(out, plan)
    assert all(e["tasks"] == list(TASKS) for e in out.read_ledger(out.ledger_ids()).values())


def test_a_removed_task_leaves_shards_done(manifest, out):
    run_local(config(manifest, out), out, RUN1)
    plan = make_plan(config(manifest, out, tasks=("qa",)), out)
    assert plan.todo == {} and plan.counts["done"] == 3


# -- retry_failed ------------------------------------------------------------------------------


def test_retry_failed(manifest, out):
    run_local(config(manifest, out), out, RUN1, fail_rows(1, 9))
    entries = out.read_ledger(out.ledger_ids())
    assert len(entries) == 3
    assert make_plan(config(manifest, out), out).todo == {}  # failures are done unless retried

    cfg = config(manifest, out, runtime={"retry_failed": True})
    before = snapshot(out)
    dry = make_plan(cfg, out, write=False)
    assert snapshot(out) == before
    plan = make_plan(cfg, out)
    first, _, last = plan.shards
    assert list(plan.todo) == [first.id, last.id] and all(t.resume for t in plan.todo.values())
    assert [t.expected for t in plan.todo.values()] == [2, 2] == [t.expected for t in dry.todo.values()]
    check_owed(plan, out, ok_only=True)
    assert out.ledger_ids() == [plan.shards[1].id]  # the retried shards' entries are gone first

    run = run_local(cfg, out, RUN2)  # heals
    assert sorted((i["row"], tuple(i["tasks"])) for i in run.items) == [(1, TASKS), (9, TASKS)]
    check_complete(out, plan)
    assert all(e["counts"] == {t: {"ok": e["rows"]} for t in TASKS} for e in out.read_ledger(out.ledger_ids()).values())
    assert make_plan(cfg, out).todo == {}


def test_retry_that_fails_again_keeps_the_newest_failure(manifest, out):
    first = run_local(config(manifest, out), out, RUN1, fail_rows(2)).plan.shards[0].id
    cfg = config(manifest, out, runtime={"retry_failed": True})
    run_local(cfg, out, RUN2, lambda item, task: Status.DECODE_ERROR if item["row"] == 2 else Status.OK)
    rows = [r for r in read_parts(out) if r["row"] == 2]
    assert sorted((r["task"], r["status"], r["run_id"]) for r in rows) == [
        ("caption", "decode_error", RUN2),
        ("qa", "decode_error", RUN2),
    ]
    assert out.read_ledger([first])[first]["counts"] == {t: {"ok": 3, "decode_error": 1} for t in TASKS}
    assert list(make_plan(cfg, out).todo) == [first]  # retried again, as long as it fails
    assert first not in out.ledger_ids()


def test_retry_failed_ignores_failures_of_removed_tasks(manifest, out):
    run_local(config(manifest, out), out, RUN1, lambda item, task: Status.ENGINE_ERROR if task == "qa" else Status.OK)
    cfg = config(manifest, out, tasks=("caption",), runtime={"retry_failed": True})
    plan = make_plan(cfg, out)
    assert plan.todo == {} and plan.counts["done"] == 3
    assert len(out.ledger_ids()) == 3


# -- changed manifests ---------------------------------------------------------------------------


def test_a_changed_row_is_refused(manifest, out, tmp_path):
    run_local(config(manifest, out), out)
    recs = [record(i) for i in range(ROWS)]
    recs[5]["image"] = "s3://bucket/changed.jpg"
    write_jsonl(manifest, recs)
    before = results(out)
    with pytest.raises(PlanError) as e:
        make_plan(config(manifest, out), out)
    shard = make_plan(config(manifest, out, input={"on_change": "redo"}), out, write=False).shards[1]
    assert shard.id in str(e.value) and "input.on_change" in str(e.value) and str(manifest) in str(e.value)
    assert "rows 4-7" in str(e.value)
    assert results(out) == before


def test_a_changed_row_is_redone_with_on_change_redo(manifest, out):
    run_local(config(manifest, out), out, RUN1)
    recs = [record(i) for i in range(ROWS)]
    recs[5]["image"] = "s3://bucket/changed.jpg"
    write_jsonl(manifest, recs)
    cfg = config(manifest, out, input={"on_change": "redo"})
    before = snapshot(out)
    dry = make_plan(cfg, out, write=False)
    assert snapshot(out) == before
    plan = make_plan(cfg, out)
    changed = plan.shards[1]
    assert list(plan.todo) == [changed.id] == list(dry.todo)
    assert plan.todo[changed.id].expected == 8 and not plan.todo[changed.id].resume
    assert plan.counts == {"total": 3, "done": 2, "todo": 0, "resume": 0, "redo": 1}
    assert out.part_files(changed.id) == [] and changed.id not in out.ledger_ids()
    assert changed.id not in plan.with_output
    run = run_local(cfg, out, RUN2)
    assert {i["row"] for i in run.items} == {4, 5, 6, 7}
    assert [i["images"] for i in run.items if i["row"] == 5] == [["s3://bucket/changed.jpg"]]
    check_complete(out, plan)


def test_partial_parts_of_changed_rows(manifest, out):
    """A crashed shard's parts, made from rows since changed: refused, or redone."""
    run_local(config(manifest, out, output={"rows_per_file": 1}), out, crash_after=3)
    shard = make_plan(config(manifest, out), out, write=False).shards[0]
    assert out.part_files(shard.id) and not out.ledger_ids()
    recs = [record(i) for i in range(ROWS)]
    recs[0]["question"] = "changed"
    write_jsonl(manifest, recs)
    with pytest.raises(PlanError, match=shard.id):
        make_plan(config(manifest, out), out)
    cfg = config(manifest, out, input={"on_change": "redo"})
    plan = make_plan(cfg, out)
    assert plan.todo[shard.id].expected == 8 and not plan.todo[shard.id].resume
    assert out.part_files(shard.id) == []
    run_local(cfg, out, RUN2)
    check_complete(out, plan)


def test_a_removed_manifest_file_leaves_orphans(tmp_path, out):
    keep = write_jsonl(tmp_path / "in" / "a.jsonl", [record(i) for i in range(5)]).path
    gone = write_jsonl(tmp_path / "in" / "b.jsonl", [record(i) for i in range(5, 11)]).path
    run_local(config(tmp_path / "in", out), out, RUN1)
    gone_shards = sorted(e["shard"] for e in out.read_ledger(out.ledger_ids()).values() if e["path"] == str(gone))
    assert len(gone_shards) == 2
    gone.unlink()
    with pytest.raises(PlanError) as e:
        make_plan(config(tmp_path / "in", out), out)
    assert gone_shards[0] in str(e.value) and "input.on_change" in str(e.value)
    assert all(out.part_files(s) for s in gone_shards)

    cfg = config(tmp_path / "in", out, input={"on_change": "redo"})
    before = snapshot(out)
    make_plan(cfg, out, write=False)
    assert snapshot(out) == before
    plan = make_plan(cfg, out)
    assert plan.todo == {} and [s.path for s in plan.shards] == [str(keep)] * 2
    assert all(out.part_files(s) == [] for s in gone_shards)
    assert set(out.ledger_ids()) == {s.id for s in plan.shards}


def test_a_shorter_file_is_changed(manifest, out):
    run_local(config(manifest, out), out)
    write_jsonl(manifest, [record(i) for i in range(5)])  # shards 4 1: the third is gone
    with pytest.raises(PlanError, match="2 shard"):
        make_plan(config(manifest, out), out)
    plan = make_plan(config(manifest, out, input={"on_change": "redo"}), out)
    assert [s.rows for s in plan.shards] == [4, 1] and list(plan.todo) == [plan.shards[1].id]
    run_local(config(manifest, out, input={"on_change": "redo"}), out, RUN2)
    check_complete(out, plan)
    assert len(read_parts(out)) == 5 * 2


@pytest.mark.parametrize("added", [1, 2, 7])
def test_appended_rows(tmp_path, out, added):
    written = write_jsonl(tmp_path / "m.jsonl", [record(i) for i in range(ROWS)])
    cfg = config(written.path, out)
    old = run_local(cfg, out, RUN1).plan.shards
    append_jsonl(written, [record(i) for i in range(ROWS, ROWS + added)])
    before = snapshot(out)
    dry = make_plan(cfg, out, write=False)
    assert snapshot(out) == before
    plan = make_plan(cfg, out)
    assert plan.summary(list(TASKS)) == dry.summary(list(TASKS))
    grown = plan.shards[2]
    assert [s.id for s in plan.shards[:3]] == [s.id for s in old]
    assert grown.rows == min(4, 2 + added)
    assert plan.todo[grown.id].resume and plan.todo[grown.id].expected == (grown.rows - 2) * 2
    new = [s.id for s in plan.shards[3:]]
    assert list(plan.todo) == [grown.id, *new] and not any(plan.todo[s].resume for s in new)
    assert plan.counts == {"total": len(plan.shards), "done": 2, "todo": len(new), "resume": 1, "redo": 0}
    run = run_local(cfg, out, RUN2)
    assert sorted({i["row"] for i in run.items}) == list(range(ROWS, ROWS + added))
    check_complete(out, plan)
    assert make_plan(cfg, out).todo == {}


def test_appended_rows_to_a_crashed_shard(tmp_path, out):
    written = write_jsonl(tmp_path / "m.jsonl", [record(i) for i in range(ROWS)])
    cfg = config(written.path, out, output={"rows_per_file": 1})
    run_local(cfg, out, RUN1, crash_after=17)  # the last shard is partial
    append_jsonl(written, [record(ROWS)])
    plan = make_plan(cfg, out)
    last = plan.shards[2]
    assert plan.todo[last.id].resume
    check_owed(plan, out)
    run_local(cfg, out, RUN2)
    check_complete(out, plan)


# -- input.limit and settings ------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 4, 5, 9, 10, 50])
def test_limit(manifest, out, limit):
    cfg = config(manifest, out, input={"limit": limit})
    plan = make_plan(cfg, out)
    assert plan.rows == min(limit, ROWS) and plan.pairs_todo == min(limit, ROWS) * 2
    assert [s.rows for s in plan.shards] == [min(4, max(0, min(limit, ROWS) - 4 * k)) for k in range(len(plan.shards))]
    run = run_local(cfg, out)
    assert sorted({i["row"] for i in run.items}) == list(range(min(limit, ROWS)))
    check_complete(out, plan)


@pytest.mark.parametrize("limit", [2, 5])
def test_a_limited_run_then_the_whole_manifest(manifest, out, limit):
    """A smoke run with input.limit, then the real run into the same output."""
    run_local(config(manifest, out, input={"limit": limit}), out, RUN1)
    cfg = config(manifest, out)
    plan = make_plan(cfg, out)
    assert plan.pairs_todo == (ROWS - limit) * 2
    check_owed(plan, out)
    run = run_local(cfg, out, RUN2)
    assert sorted({i["row"] for i in run.items}) == list(range(limit, ROWS))
    check_complete(out, plan)


def test_a_limited_run_over_a_finished_output(manifest, out):
    run_local(config(manifest, out), out, RUN1)
    before = snapshot(out)
    plan = make_plan(config(manifest, out, input={"limit": 5}), out)
    assert plan.todo == {} and plan.counts["done"] == 2
    assert snapshot(out) == before


@pytest.mark.parametrize("setting", [{"shard_rows": 3}, {"id_column": "key"}])
def test_changed_settings_are_refused(manifest, out, setting):
    make_plan(config(manifest, out), out)
    with pytest.raises(PlanError, match=f"input.{next(iter(setting))}="):
        make_plan(config(manifest, out, input=setting), out)


def test_a_dry_run_on_a_fresh_output_writes_nothing(manifest, out):
    before = snapshot(out)
    plan = make_plan(config(manifest, out, input={"on_change": "redo"}), out, write=False)
    assert snapshot(out) == before == {} and len(plan.todo) == 3


def test_dry_run_counts_what_a_real_plan_counts(manifest, out):
    """A retry run crashed: its parts hold a retried row next to the failure it replaces."""
    run_local(config(manifest, out), out, RUN1, fail_rows(1, 2))
    retry = config(manifest, out, runtime={"retry_failed": True}, output={"rows_per_file": 1})
    run_local(retry, out, RUN2, fail_rows(2), crash_after=1)  # after row 1's retried pairs
    cfg = config(manifest, out)
    before = snapshot(out)
    dry = make_plan(cfg, out, write=False)
    assert snapshot(out) == before
    real = make_plan(cfg, out)
    assert dry.summary(list(TASKS)) == real.summary(list(TASKS))
    assert {k: t.expected for k, t in dry.todo.items()} == {k: t.expected for k, t in real.todo.items()}


# -- cached file plans ------------------------------------------------------------------------


def counting_mapper(calls: list):
    def mapper(fn, jobs):
        calls.extend(jobs)
        return map(fn, jobs)

    return mapper


def test_file_plans_are_cached_until_the_file_changes(tmp_path, out):
    a = write_jsonl(tmp_path / "in" / "a.jsonl", [record(i) for i in range(5)])
    write_jsonl(tmp_path / "in" / "b.jsonl", [record(i) for i in range(5, 9)])
    cfg = config(tmp_path / "in", out)
    calls: list = []
    first = make_plan(cfg, out, counting_mapper(calls))
    assert len(calls) == 2
    calls.clear()
    assert make_plan(cfg, out, counting_mapper(calls)).shards == first.shards and calls == []
    append_jsonl(a, [record(20)])
    again = make_plan(cfg, out, counting_mapper(calls))
    assert [job[1].path for job in calls] == [str(a.path)]
    assert [s.rows for s in again.shards] == [4, 2, 4]


def test_a_dry_run_does_not_cache(manifest, out):
    calls: list = []
    make_plan(config(manifest, out), out, counting_mapper(calls), write=False)
    make_plan(config(manifest, out), out, counting_mapper(calls), write=False)
    assert len(calls) == 2


# -- splits ------------------------------------------------------------------------------------


def test_splits_of_seekable_jsonl_are_one_per_shard(manifest, out):
    plan = make_plan(config(manifest, out), out)
    assert [[s["id"] for s in split["shards"]] for split in plan.splits] == [[s.id] for s in plan.shards]
    assert all(split["byte_start"] is not None for split in plan.splits)
    json.dumps(plan.splits)  # they travel as JSON


def test_splits_of_gz_and_csv_are_one_per_file(tmp_path, out):
    write_jsonl(tmp_path / "in" / "a.jsonl.gz", [record(i) for i in range(9)], compress=True)
    write_csv(tmp_path / "in" / "b.csv", ["id", "image"], [[f"c{i}", "s3://b/x.jpg"] for i in range(6)] + [BLANK])
    plan = make_plan(config(tmp_path / "in", out), out)
    assert [len(split["shards"]) for split in plan.splits] == [3, 2]
    assert [split["fmt"] for split in plan.splits] == ["jsonl", "csv"]
    run_local(config(tmp_path / "in", out), out)
    check_complete(out, plan)


def test_parquet_shards_sharing_a_row_group_share_a_split(tmp_path, out):
    # row groups [0, 6) [6, 12) [12, 14); shards of 4: [0,4) [4,8) [8,12) [12,14)
    path = write_parquet(tmp_path / "m.parquet", [record(i) for i in range(14)], row_group_size=6).path
    cfg = config(path, out)
    plan = make_plan(cfg, out)
    assert [[s["row_start"] for s in split["shards"]] for split in plan.splits] == [[0, 4, 8], [12]]
    assert [split["row_groups"] for split in plan.splits] == [[0, 1], [2]]
    run_local(cfg, out)
    check_complete(out, plan)


def test_parquet_todo_shards_around_a_done_one_share_a_split(tmp_path, out):
    path = write_parquet(tmp_path / "m.parquet", [record(i) for i in range(12)], row_group_size=12).path
    cfg = config(path, out)
    first = run_local(cfg, out, RUN1).plan
    for s in (first.shards[0], first.shards[2]):
        out.remove_ledger(s.id)
        out.remove(out.part_files(s.id))
    plan = make_plan(cfg, out)
    assert [[s["row_start"] for s in split["shards"]] for split in plan.splits] == [[0, 8]]
    run = run_local(cfg, out, RUN2)
    assert sorted(i["row"] for i in run.items) == [0, 1, 2, 3, 8, 9, 10, 11]
    check_complete(out, plan)


def test_splits_carry_resume(manifest, out):
    cfg = config(manifest, out, output={"rows_per_file": 1})
    run_local(cfg, out, crash_after=3)
    plan = make_plan(cfg, out)
    assert [[s["resume"] for s in split["shards"]] for split in plan.splits] == [[True], [False], [False]]


def test_three_runs_each_pair_once(manifest, out):
    """Crash, crash, finish: every pair written exactly once in the end, each by one run."""
    cfg = config(manifest, out, output={"rows_per_file": 2})
    run_local(cfg, out, RUN1, crash_after=5)
    run_local(cfg, out, RUN2, crash_after=6)
    run_local(cfg, out, RUN3)
    plan = make_plan(cfg, out)
    check_complete(out, plan)
    assert len(read_parts(out)) == ROWS * 2
    assert {r["run_id"] for r in read_parts(out)} == {RUN1, RUN2, RUN3}
