"""ReadStage without Ray: split specs (JSON strings, as job/pipeline.py hands them out) ->
ITEM tables, skipping what resumed shards already have and marking duplicate ids."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.output import OutputDir
from internvl_batch.job.readers import cut_shards, split_of
from internvl_batch.job.sink import ShardSink, ShardTodo
from internvl_batch.job.stages.read import ReadStage
from internvl_batch.records import item_schema, output_schema
from internvl_batch.status import Status
from tests.support.manifests import BLANK, TASKS, manifest_file, record, write_jsonl
from tests.support.results import RUN1, answers, result, write_part

ITEMS = [record(0), BLANK, record(1, id=None), "{broken", record(2, source="s2"), BLANK, *map(record, range(3, 10))]


@pytest.fixture
def manifest(tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", ITEMS)


@pytest.fixture
def out(tmp_path) -> OutputDir:
    return OutputDir(str(tmp_path / "out"))


def stage(path: Path, out: OutputDir, *, retry_failed=False, duplicates=None, chunk_rows=1024, passthrough=()):
    cfg = InputConfig(path=str(path), passthrough=passthrough)
    return ReadStage(cfg, list(TASKS), (out.url, {}), retry_failed, duplicates, chunk_rows)


def batch(*splits: dict) -> pa.Table:
    return pa.table({"split": [json.dumps(s) for s in splits]})


def read(reader: ReadStage, *splits: dict) -> list[dict]:
    tables = list(reader.process(batch(*splits)))
    assert all(t.schema == reader.schema for t in tables)
    return [r for t in tables for r in t.to_pylist()]


def shards_of(path: Path, shard_rows: int = 4):
    fs, file = manifest_file(path)
    return file, cut_shards(fs, file, shard_rows)


# -- plain reading -----------------------------------------------------------------------------


def test_items_of_a_split(manifest, out):
    file, shards = shards_of(manifest.path)  # rows 4 4 3
    reader = stage(manifest.path, out, passthrough=("source",))
    items = read(reader, *[split_of(file, [s]) for s in shards])
    assert [(i["shard"], i["row"]) for i in items] == [
        (s.id, n) for s in shards for n in range(s.row_start, s.row_start + s.rows)
    ]
    assert [i["id"] for i in items] == [
        "r000",
        f"{file.path}#3",
        f"{file.path}#4",
        "r002",
        *[f"r{i:03d}" for i in range(3, 10)],
    ]
    assert all(i["tasks"] == list(TASKS) for i in items)
    assert [i["status"] for i in items[:4]] == [Status.OK, Status.INVALID_ROW, Status.INVALID_ROW, Status.OK]
    assert "is not valid JSON" in items[2]["error"]
    assert items[3]["passthrough.source"] == "s2" and items[0]["passthrough.source"] is None
    assert items[0]["images"] == ["s3://bucket/0.jpg"] and items[0]["media"] == "image"


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 100])
def test_chunks(manifest, out, chunk_rows):
    file, shards = shards_of(manifest.path)
    reader = stage(manifest.path, out, chunk_rows=chunk_rows)
    sizes = [t.num_rows for t in reader.process(batch(split_of(file, shards[:2]), split_of(file, shards[2:])))]
    per_split = [8, 3]
    expected = [min(chunk_rows, n - k) for n in per_split for k in range(0, n, chunk_rows)]
    assert sizes == expected


def test_a_split_read_from_the_top_yields_only_its_shards(tmp_path, out):
    """gz: read from the top; the records of shards not in the split (done) are skipped."""
    written = write_jsonl(tmp_path / "m.jsonl.gz", ITEMS, compress=True)
    file, shards = shards_of(written.path, 3)  # rows 3 3 3 2
    items = read(stage(written.path, out), split_of(file, [shards[1], shards[3]]))
    assert [(i["shard"], i["row"]) for i in items] == [(shards[1].id, n) for n in (3, 4, 5)] + [
        (shards[3].id, n) for n in (9, 10)
    ]


def test_empty_batch(manifest, out):
    assert list(stage(manifest.path, out).process(pa.table({"split": pa.array([], pa.string())}))) == []


# -- resumed shards ------------------------------------------------------------------------------


def test_resume_skips_pairs_the_sink_wrote(manifest, out):
    file, shards = shards_of(manifest.path)
    first = shards[0]
    reader = stage(manifest.path, out)
    items = read(reader, split_of(file, [first]))
    sink = ShardSink(out, output_schema(), RUN1, list(TASKS), {first.id: ShardTodo(first, 8)}, 1000, 1e9)
    done = answers(pa.Table.from_pylist(items, schema=item_schema()), RUN1, lambda i, t: Status.OK)
    sink.add(
        done.filter(
            pa.array([(r["row"], r["task"]) in {(0, "caption"), (0, "qa"), (2, "qa")} for r in done.to_pylist()])
        )
    )
    sink.flush_all()
    again = read(reader, split_of(file, [first], resume=True))
    assert [(i["row"], i["tasks"]) for i in again] == [(1, list(TASKS)), (2, ["caption"]), (3, list(TASKS))]
    # Without resume in the spec the reader does not look at the output: the planner decides.
    assert len(read(reader, split_of(file, [first]))) == 4


@pytest.mark.parametrize("retry_failed", [False, True])
def test_only_ok_pairs_are_done_when_retrying(manifest, out, retry_failed):
    file, shards = shards_of(manifest.path)
    second = shards[1]  # rows 4..7
    write_part(out, second.id, RUN1, 0, [
        result(second.id, 4, "caption", RUN1), result(second.id, 4, "qa", RUN1, Status.ENGINE_ERROR),
        result(second.id, 5, "caption", RUN1, Status.FETCH_ERROR), result(second.id, 5, "qa", RUN1, Status.FETCH_ERROR),
        result(second.id, 6, "caption", RUN1), result(second.id, 6, "qa", RUN1),
    ], second.checksum)  # fmt: skip
    items = read(stage(manifest.path, out, retry_failed=retry_failed), split_of(file, [second], resume=True))
    if retry_failed:
        assert [(i["row"], i["tasks"]) for i in items] == [(4, ["qa"]), (5, list(TASKS)), (7, list(TASKS))]
    else:
        assert [(i["row"], i["tasks"]) for i in items] == [(7, list(TASKS))]


def test_resume_is_per_shard_within_a_split(tmp_path, out):
    written = write_jsonl(tmp_path / "m.jsonl.gz", [record(i) for i in range(6)], compress=True)
    file, shards = shards_of(written.path, 3)
    a, b = shards
    write_part(out, a.id, RUN1, 0, [result(a.id, 0, t, RUN1) for t in TASKS], a.checksum)
    write_part(out, b.id, RUN1, 0, [result(b.id, 3, t, RUN1) for t in TASKS], b.checksum)
    split = split_of(file, [a, b])
    split["shards"][0]["resume"] = True  # b is not resumed: the planner redoes it whole
    items = read(stage(written.path, out), split)
    assert [i["row"] for i in items] == [1, 2, 3, 4, 5]


# -- duplicates ----------------------------------------------------------------------------------


def write_duplicates(out: OutputDir, name: str, losers: list[tuple[str, str, int]]) -> str:
    t = pa.table({
        "id": [i for i, _, _ in losers], "shard": [s for _, s, _ in losers],
        "row": pa.array([r for _, _, r in losers], pa.int64()), "rank": pa.array(range(len(losers)), pa.int64()),
    })  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(t, buf)
    out.write_atomic(name, buf.getvalue())
    return name


def test_duplicates_are_marked(tmp_path, out):
    recs = [record(0), record(1), record(0, image="s3://b/x.jpg"), record(3), record(1), record(0, image=None)]
    written = write_jsonl(tmp_path / "m.jsonl", recs)
    file, shards = shards_of(written.path, 3)
    name = write_duplicates(
        out,
        "_state/duplicates-x.parquet",
        [("r000", shards[0].id, 2), ("r001", shards[1].id, 4), ("r000", shards[1].id, 5)],
    )
    items = read(stage(written.path, out, duplicates=name), *[split_of(file, [s]) for s in shards])
    marked = {i["row"]: i for i in items if i["status"] == Status.INVALID_ROW}
    assert sorted(marked) == [2, 4, 5]
    for row, line in [(2, 3), (4, 5), (5, 6)]:
        assert marked[row]["id"] == f"{recs[row]['id']}#dup@{file.path}#{line}"
        assert marked[row]["error"].startswith(f"duplicate id {recs[row]['id']!r}")
    assert "no 'image' or 'video'" in marked[5]["error"]  # its own problem is kept too
    assert [i["id"] for i in items if i["status"] == Status.OK] == ["r000", "r001", "r003"]
    assert len({i["id"] for i in items}) == len(items)  # keys are unique again


def test_duplicates_of_other_shards_do_not_leak(tmp_path, out):
    written = write_jsonl(tmp_path / "m.jsonl", [record(i) for i in range(6)])
    file, shards = shards_of(written.path, 3)
    name = write_duplicates(out, "_state/d.parquet", [("r004", shards[1].id, 4), ("r001", "elsewhere-000000", 1)])
    items = read(stage(written.path, out, duplicates=name), split_of(file, [shards[0]]))
    assert all(i["status"] == Status.OK for i in items)
    items = read(stage(written.path, out, duplicates=name), split_of(file, [shards[1]]))
    assert [i["status"] for i in items] == [Status.OK, Status.INVALID_ROW, Status.OK]
