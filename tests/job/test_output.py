"""Parquet output: schema, part files, the resume index, reconcile and the _SUCCESS marker.

OutputDir/PartWriter tests run twice: on a local directory (dot-file + rename commit) and on
a `memory://` prefix (the object-store path: direct write, no rename).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvl_batch.job import output
from internvl_batch.job.output import OutputDir, PartWriter
from internvl_batch.job.records import OUTPUT_FIELDS, output_schema
from internvl_batch.status import Status

RUN1 = "20240101T000000Z-aaaaaaaa"
RUN2 = "20240102T000000Z-bbbbbbbb"
PASSTHROUGH = ("source", "meta")


# -- fixtures / helpers -------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def out_url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    url = f"memory://output-test-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def out(out_url) -> OutputDir:
    return OutputDir(out_url)


@pytest.fixture
def schema() -> pa.Schema:
    return output_schema(PASSTHROUGH)


def result(id: str, task: str = "caption", status: str = "ok", **kw: Any) -> dict[str, Any]:
    """A result row as the inference stage makes it; failed rows carry nulls."""
    n = sum(map(ord, id + task))  # values that differ per row
    if status == "ok":
        row = {
            "id": id,
            "task": task,
            "status": status,
            "error": None,
            "response": f"answer {id}/{task}",
            "finish_reason": "stop",
            "num_prompt_tokens": n % 1000,
            "num_output_tokens": n % 50 + 1,
            "num_tiles": n % 7 + 1,
            "media": "image",
            "model": "m",
            "preprocess_ms": n / 8,
            "engine_ms": n / 4,
            "source": f"src-{id}",
            "meta": json.dumps({"n": n}),
        }
    else:
        row = {
            "id": id,
            "task": task,
            "status": status,
            "error": f"{status} for {id}",
            "response": None,
            "finish_reason": None,
            "num_prompt_tokens": None,
            "num_output_tokens": None,
            "num_tiles": None,
            "media": "none",
            "model": "m",
            "preprocess_ms": None,
            "engine_ms": None,
            "source": None,
            "meta": None,
        }
    row.update(kw)
    return row


def add(w: PartWriter, rows: list[dict]) -> None:
    """What the inference stage hands the sink: a table of complete output rows."""
    w.add(pa.Table.from_pylist([{**r, "run_id": w.run_id} for r in rows], schema=w.schema))


def write_run(
    out: OutputDir, schema: pa.Schema, run_id: str, rows: list[dict], rows_per_file: int = 1000
) -> PartWriter:
    w = PartWriter(out, schema, run_id, rows_per_file=rows_per_file, flush_interval_s=1e9)
    add(w, rows)
    w.flush()
    return w


def read_file(out: OutputDir, path: str) -> pa.Table:
    with out.fs.open(path, "rb") as f:
        return pq.read_table(f)


def read_all(out: OutputDir) -> list[dict[str, Any]]:
    return [r for p in out.part_files() for r in read_file(out, p).to_pylist()]


def listing(out: OutputDir) -> list[str]:
    """Every object under the output root, hidden ones included."""
    return sorted(p.rsplit("/", 1)[-1] for p in out.fs.find(out.root))


def keys_of(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["id"], r["task"]) for r in rows]


# -- schema --------------------------------------------------------------------------------


def test_output_schema_appends_passthrough_strings():
    schema = output_schema(["source", "meta"])
    assert list(schema)[: len(OUTPUT_FIELDS)] == OUTPUT_FIELDS
    assert schema.names[len(OUTPUT_FIELDS) :] == ["source", "meta"]
    assert schema.field("source").type == pa.string() and schema.field("meta").type == pa.string()
    assert output_schema([]) == pa.schema(OUTPUT_FIELDS)


@pytest.mark.parametrize("clash", ["id", "status", "response", "run_id"])
def test_output_schema_rejects_clashing_passthrough(clash):
    with pytest.raises(ValueError, match=re.escape(repr([clash]))):
        output_schema(["ok_column", clash])


# -- OutputDir basics ------------------------------------------------------------------------


def test_object_store_path_is_not_local(out, out_url):
    assert out._local == (not out_url.startswith("memory://"))
    assert out.fs.exists(out.root)


def test_empty_output(out):
    assert out.part_files() == []
    keys = out.read_keys()
    assert keys.num_rows == 0 and keys.column_names == ["id", "task", "status", "run_id", "file", "row"]
    assert out.done_keys(retry_failed=False) == set() and out.done_keys(retry_failed=True) == set()
    assert out.status_counts() == Counter()
    assert out.reconcile() == 0


def test_trailing_slash_is_the_same_dir(out_url, schema):
    write_run(OutputDir(out_url), schema, RUN1, [result("a")])
    assert keys_of(read_all(OutputDir(out_url + "/"))) == [("a", "caption")]


# -- PartWriter -------------------------------------------------------------------------------


def test_part_writer_commits_bounded_files(out, schema):
    rows = [result(f"r{i}", status="ok" if i % 3 else "fetch_error") for i in range(7)]
    w = PartWriter(out, schema, RUN1, rows_per_file=3, flush_interval_s=1e9)
    add(w, rows[:2])
    assert out.part_files() == [] and w.written == 0  # below rows_per_file: buffered
    add(w, rows[2:])
    assert len(out.part_files()) == 2 and w.written == 6
    w.flush()
    assert w.written == 7
    files = out.part_files()
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"part-{RUN1}-{i:05d}.parquet" for i in range(3)]
    tables = [read_file(out, f) for f in files]
    assert [t.num_rows for t in tables] == [3, 3, 1]
    for t in tables:
        assert t.schema.equals(schema, check_metadata=False)
    assert read_all(out) == [{**r, "run_id": RUN1} for r in rows]
    assert listing(out) == [f.rsplit("/", 1)[-1] for f in files]  # no .tmp left behind


def test_error_rows_with_nulls_round_trip(out, schema):
    rows = [result("bad", status=s) for s in [s for s in Status if s != Status.OK]]
    write_run(out, schema, RUN1, rows)
    back = read_all(out)
    assert back == [{**r, "run_id": RUN1} for r in rows]
    assert all(b["response"] is None and b["num_output_tokens"] is None for b in back)


def test_part_writer_keeps_null_columns(out, schema):
    sparse = {"id": "s", "task": "t", "status": "invalid_row", "error": "missing 'image'"}
    write_run(out, schema, RUN2, [sparse])
    [back] = read_all(out)
    assert back["run_id"] == RUN2
    assert back["error"] == "missing 'image'"
    assert all(back[c] is None for c in schema.names if c not in sparse and c != "run_id")


def test_flush_without_rows_writes_nothing(out, schema):
    w = PartWriter(out, schema, RUN1, rows_per_file=2, flush_interval_s=1e9)
    w.flush()
    add(w, [])
    w.flush()
    assert out.part_files() == [] and w.written == 0


def test_exact_multiple_leaves_nothing_to_flush(out, schema):
    w = PartWriter(out, schema, RUN1, rows_per_file=2, flush_interval_s=1e9)
    add(w, [result(f"r{i}") for i in range(4)])
    files = out.part_files()
    w.flush()
    assert out.part_files() == files and len(files) == 2 and w.written == 4


def test_age_based_flush(out, schema, monkeypatch):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(output, "time", SimpleNamespace(monotonic=lambda: clock.now))
    w = PartWriter(out, schema, RUN1, rows_per_file=100, flush_interval_s=10)
    add(w, [result("a")])
    assert out.part_files() == []
    clock.now += 9.9
    add(w, [result("b")])
    assert out.part_files() == []
    clock.now += 0.1  # 10 s since the writer started
    add(w, [result("c")])
    assert len(out.part_files()) == 1 and w.written == 3
    clock.now += 5  # the age restarts at the commit
    add(w, [result("d")])
    assert len(out.part_files()) == 1
    clock.now += 5
    add(w, [])
    assert keys_of(read_all(out)) == [(i, "caption") for i in "abcd"]


@pytest.fixture
def memory_out():
    url = f"memory://output-direct-{uuid.uuid4().hex}"
    out = OutputDir(url)
    yield out
    out.fs.rm(out.root, recursive=True)


def test_object_store_write_is_direct(memory_out, schema, monkeypatch):
    """On an object store, a part file is written under its final name (no rename)."""
    out = memory_out

    def no_rename(*a, **k):
        raise AssertionError("object stores must not rename")

    monkeypatch.setattr(out.fs, "mv", no_rename)
    write_run(out, schema, RUN1, [result("a"), result("b")])
    write_run(out, schema, RUN2, [result("a", response="newer")])
    assert out.reconcile() == 1  # run 1's part is rewritten in place, directly too
    assert listing(out) == [f"part-{RUN1}-00000.parquet", f"part-{RUN2}-00000.parquet"]
    assert sorted((r["id"], r["run_id"]) for r in read_all(out)) == [("a", RUN2), ("b", RUN1)]


def test_local_write_goes_through_hidden_tmp(tmp_path, schema, monkeypatch):
    out = OutputDir(str(tmp_path / "out"))
    moves = []
    real_mv = out.fs.mv
    monkeypatch.setattr(out.fs, "mv", lambda a, b, **k: (moves.append((a, b)), real_mv(a, b, **k)))
    write_run(out, schema, RUN1, [result("a")])
    final = f"{out.root}/part-{RUN1}-00000.parquet"
    assert moves == [(f"{out.root}/.part-{RUN1}-00000.parquet.tmp", final)]
    assert listing(out) == [final.rsplit("/", 1)[-1]]


def test_part_files_ignore_other_objects(out, schema):
    write_run(out, schema, RUN1, [result("a")])
    for name in ("_SUCCESS", f".part-{RUN2}-00000.parquet.tmp", "notes.parquet"):
        with out.fs.open(f"{out.root}/{name}", "wb") as f:
            f.write(b"junk")
    assert [p.rsplit("/", 1)[-1] for p in out.part_files()] == [f"part-{RUN1}-00000.parquet"]
    assert out.status_counts() == Counter({"ok": 1})


# -- resume index -------------------------------------------------------------------------------


def test_done_keys(out, schema):
    rows = [
        result("a"),
        result("a", "labels", "engine_error"),
        result("b", status="fetch_error"),
        result("c", status="invalid_row"),
        result("d"),
    ]
    write_run(out, schema, RUN1, rows, rows_per_file=2)
    assert out.done_keys(retry_failed=False) == set(keys_of(rows))
    assert out.done_keys(retry_failed=True) == {(r["id"], r["task"]) for r in rows if r["status"] == "ok"}
    assert out.status_counts() == Counter(r["status"] for r in rows)
    keys = out.read_keys()
    assert keys["run_id"].to_pylist() == [RUN1] * len(rows)
    assert sorted(set(keys["file"].to_pylist())) == out.part_files()


# -- reconcile ------------------------------------------------------------------------------------


@pytest.fixture
def retried(out, schema):
    """Run 1 left failures; run 2 (a retry) redid them: b now ok, c failed again differently."""
    run1 = [
        result("a"),
        result("b", status="fetch_error"),
        result("c", status="engine_error"),
        result("d"),
        result("e", status="decode_error"),
    ]
    run2 = [result("b", response="retried b"), result("c", status="decode_error"), result("e", status="too_large")]
    write_run(out, schema, RUN1, run1, rows_per_file=3)  # files: [a b c] [d e]
    write_run(out, schema, RUN2, run2)
    return run1, run2


def test_reconcile_keeps_one_row_per_key(out, retried):
    run1, run2 = retried
    before = {p: read_file(out, p) for p in out.part_files()}
    assert out.reconcile() == 3
    rows = read_all(out)
    assert sorted(keys_of(rows)) == sorted(set(keys_of(run1 + run2)))
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"] == {**run1[0], "run_id": RUN1}  # untouched
    assert by_id["b"] == {**run2[0], "run_id": RUN2}  # ok beats failed
    assert by_id["c"]["status"] == "decode_error" and by_id["c"]["run_id"] == RUN2  # newest failure wins
    assert by_id["e"]["status"] == "too_large" and by_id["e"]["run_id"] == RUN2
    assert by_id["d"] == {**run1[3], "run_id": RUN1}
    # rewritten files keep their schema; run 2's file was not touched
    for p in out.part_files():
        assert read_file(out, p).schema.equals(before[p].schema, check_metadata=False)
    run2_file = f"{out.root}/part-{RUN2}-00000.parquet"
    assert read_file(out, run2_file).equals(before[run2_file])
    assert not any(n.endswith(".tmp") for n in listing(out))
    assert out.status_counts() == Counter({"ok": 3, "decode_error": 1, "too_large": 1})
    assert out.reconcile() == 0  # idempotent
    assert read_all(out) == rows


def test_reconcile_ok_beats_newer_failure(out, schema):
    write_run(out, schema, RUN1, [result("x"), result("y")])
    write_run(out, schema, RUN2, [result("x", status="engine_error")])
    assert out.reconcile() == 1
    assert [(r["id"], r["status"], r["run_id"]) for r in read_all(out)] == [("x", "ok", RUN1), ("y", "ok", RUN1)]
    # run 2's only file held only the superseded row: deleted, not left empty
    assert [p.rsplit("/", 1)[-1] for p in out.part_files()] == [f"part-{RUN1}-00000.parquet"]


def test_reconcile_newest_ok_wins(out, schema):
    write_run(out, schema, RUN1, [result("x", response="old")])
    write_run(out, schema, RUN2, [result("x", response="new")])
    assert out.reconcile() == 1
    assert [(r["response"], r["run_id"]) for r in read_all(out)] == [("new", RUN2)]


def test_reconcile_is_per_task(out, schema):
    write_run(out, schema, RUN1, [result("x", "caption"), result("x", "labels", "engine_error")])
    write_run(out, schema, RUN2, [result("x", "labels")])
    assert out.reconcile() == 1
    assert sorted((r["task"], r["status"], r["run_id"]) for r in read_all(out)) == [
        ("caption", "ok", RUN1),
        ("labels", "ok", RUN2),
    ]


def test_reconcile_deletes_emptied_files_and_rewrites_others(out, schema):
    write_run(out, schema, RUN1, [result(i, status="fetch_error") for i in "abcd"], rows_per_file=2)  # [a b] [c d]
    write_run(out, schema, RUN2, [result(i) for i in "abc"])
    assert out.reconcile() == 3
    names = [p.rsplit("/", 1)[-1] for p in out.part_files()]
    assert names == [f"part-{RUN1}-00001.parquet", f"part-{RUN2}-00000.parquet"]
    assert keys_of(read_file(out, out.part_files()[0]).to_pylist()) == [("d", "caption")]
    assert sorted((r["id"], r["status"]) for r in read_all(out)) == [
        ("a", "ok"),
        ("b", "ok"),
        ("c", "ok"),
        ("d", "fetch_error"),
    ]


def test_reconcile_duplicate_key_within_one_file(out, schema):
    write_run(out, schema, RUN1, [result("x", status="invalid_row"), result("y"), result("x", status="invalid_row")])
    dropped = out.reconcile()
    assert sorted(keys_of(read_all(out))) == [("x", "caption"), ("y", "caption")]
    assert dropped == 1


# -- the _SUCCESS marker ----------------------------------------------------------------------


def test_success_marker(out, schema):
    out.clear_success()  # absent: no error
    write_run(out, schema, RUN1, [result("a"), result("b", status="fetch_error")])
    summary = {"finished": True, "run_id": RUN1, "status_counts": dict(out.status_counts())}
    out.write_success(summary)
    marker = f"{out.root}/_SUCCESS"
    with out.fs.open(marker, "r") as f:
        assert json.load(f) == {"finished": True, "run_id": RUN1, "status_counts": {"ok": 1, "fetch_error": 1}}
    assert len(out.part_files()) == 1  # the marker is not a part file
    out.clear_success()
    assert not out.fs.exists(marker)
    assert len(out.part_files()) == 1  # clearing the marker leaves the results
