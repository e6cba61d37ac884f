"""The output directory: atomic writes, part files per shard, the ledger, per-shard reconcile
and the _SUCCESS marker.

OutputDir tests run twice: on a local directory (hidden tmp file + rename) and on a
`memory://` prefix (the object-store path: a direct write under the final name).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvl_batch.job.output import (
    CHECKSUM_KEY,
    OutputDir,
    done_pairs,
    new_run_id,
    pair_counts,
    part_name,
    shard_of_part,
    status_counts,
)
from internvl_batch.job.shards import Shard
from internvl_batch.records import CLIP_COLUMNS, output_schema
from internvl_batch.status import Status
from tests.support.results import RUN1, RUN2, RUN3, read_parts, result, table, write_part

SHARD = "0123456789ab-000000"
OTHER = "0123456789ab-000001"
FAILURES = [s for s in Status if s != Status.OK]


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


def names(paths: list[str]) -> list[str]:
    return [p.rsplit("/", 1)[-1] for p in paths]


def listing(out: OutputDir) -> list[str]:
    """Every object under the root, hidden ones included, relative to it."""
    return sorted(p[len(out.root) + 1 :] for p in out.fs.find(out.root))


def read_file(out: OutputDir, path: str) -> pa.Table:
    with out.fs.open(path, "rb") as f:
        return pq.read_table(f)


def key_rows(rows: list[dict]) -> list[tuple]:
    return sorted((r["row"], r["task"], r["status"], r["run_id"]) for r in rows)


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 7, 999_999, 1_000_000, 123_456_789])
@pytest.mark.parametrize("seq", [0, 12, 9999, 12345])
def test_shard_of_part_inverts_part_name(index, seq):
    shard = f"0123456789ab-{index:06d}"
    for run_id in (RUN1, new_run_id()):
        name = part_name(shard, run_id, seq)
        assert shard_of_part(name) == shard
        assert shard_of_part(f"s3://bucket/out-{run_id}/x-y/{name}") == shard


def test_new_run_ids_sort_by_time_and_differ():
    a, b = new_run_id(), new_run_id()
    assert a != b  # within one second too: a random tail
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", a)
    assert RUN1 < RUN2 < RUN3 < a <= b[:16] + "~"  # "newest run wins" compares run ids as strings


# -- files ------------------------------------------------------------------------------------


def test_trailing_slash_is_the_same_dir(out_url):
    write_part(OutputDir(out_url), SHARD, RUN1, 0, [result(SHARD, 0, "caption", RUN1)], "c0")
    assert names(OutputDir(out_url + "/").part_files()) == [part_name(SHARD, RUN1, 0)]


def test_object_store_is_not_local(out, out_url):
    assert out.local == (not out_url.startswith("memory://"))
    assert out.fs.exists(out.root)


def test_part_files_per_shard(out):
    near = "0123456789ab-100000"  # a prefix of the next one's id
    far = "0123456789ab-1000000"
    for shard in (near, far, SHARD):
        for seq in (0, 1):
            write_part(out, shard, RUN1, seq, [result(shard, seq, "caption", RUN1)], "c")
    write_part(out, SHARD, RUN2, 0, [result(SHARD, 5, "caption", RUN2)], "c")
    for junk in ("_SUCCESS", f".{part_name(SHARD, RUN3, 0)}.tmp", "notes.parquet", "_ledger/x.json", "_state/a.json"):
        out.write_atomic(junk, b"junk")
    assert names(out.part_files(near)) == [part_name(near, RUN1, 0), part_name(near, RUN1, 1)]
    assert names(out.part_files(far)) == [part_name(far, RUN1, 0), part_name(far, RUN1, 1)]
    assert names(out.part_files(SHARD)) == [part_name(SHARD, r, s) for r, s in [(RUN1, 0), (RUN1, 1), (RUN2, 0)]]
    assert sorted(names(out.part_files())) == sorted(
        names(out.part_files(near) + out.part_files(far) + out.part_files(SHARD))
    )
    assert out.part_files("0123456789ab-000002") == []


def test_local_write_goes_through_a_hidden_tmp(tmp_path, monkeypatch):
    out = OutputDir(str(tmp_path / "out"))
    moves = []
    real_mv = out.fs.mv
    monkeypatch.setattr(out.fs, "mv", lambda a, b, **k: (moves.append((a, b)), real_mv(a, b, **k)))
    write_part(out, SHARD, RUN1, 0, [result(SHARD, 0, "caption", RUN1)], "c")
    out.write_json("_ledger/s.json", {"a": 1})
    part = part_name(SHARD, RUN1, 0)
    assert moves == [
        (out.path(f".{part}.tmp"), out.path(part)),
        (out.path("_ledger/.s.json.tmp"), out.path("_ledger/s.json")),
    ]
    assert listing(out) == ["_ledger/s.json", part]


def test_object_store_writes_directly(monkeypatch):
    out = OutputDir(f"memory://output-direct-{uuid.uuid4().hex}")

    def no_rename(*a, **k):
        raise AssertionError("an object store publishes on upload: no rename")

    monkeypatch.setattr(out.fs, "mv", no_rename)
    write_part(out, SHARD, RUN1, 0, [result(SHARD, r, "caption", RUN1) for r in (0, 1)], "c")
    write_part(out, SHARD, RUN2, 0, [result(SHARD, 0, "caption", RUN2)], "c")
    out.write_json("_ledger/s.json", {"a": 1})
    assert out.reconcile_shard(SHARD)[0] == 1  # run 1's part is rewritten in place, directly too
    assert listing(out) == ["_ledger/s.json", part_name(SHARD, RUN1, 0), part_name(SHARD, RUN2, 0)]
    out.fs.rm(out.root, recursive=True)


def test_error_rows_with_nulls_round_trip(out):
    passthrough = ("source",)
    rows = [result(SHARD, i, "caption", RUN1, s, passthrough) for i, s in enumerate(FAILURES)]
    rows += [result(SHARD, 99, "qa", RUN1, Status.OK, passthrough, source=None)]
    path = out.write_atomic(part_name(SHARD, RUN1, 0), table(rows, passthrough), metadata={CHECKSUM_KEY: b"abc"})
    back = read_file(out, path)
    assert back.to_pylist() == rows
    assert back.schema.equals(output_schema(passthrough), check_metadata=False)
    assert back.schema.metadata[CHECKSUM_KEY] == b"abc"
    assert all(r["response"] is None and r["num_output_tokens"] is None for r in back.to_pylist()[:-1])


def test_json_files(out):
    assert out.read_json("_state/none.json") is None
    out.write_json("_state/a.json", {"b": [1, 2]})
    out.write_json("_state/a.json", {"b": [3]})  # replaced whole
    assert out.read_json("_state/a.json") == {"b": [3]}
    assert out.read_jsons([]) == {}
    assert out.read_jsons(["_state/a.json", "_state/none.json"]) == {
        "_state/a.json": {"b": [3]},
        "_state/none.json": None,
    }


def shard(sid: str, rows: int = 4) -> Shard:
    index = int(sid.rsplit("-", 1)[1])
    return Shard(sid, "/m/a.jsonl", index, index * 4, rows, 1 + index * 4, f"sum{index}", 0, 99)


def test_ledger(out):
    assert out.ledger_ids() == [] and out.read_ledger([SHARD]) == {}
    counts = {"caption": {"ok": 3, "fetch_error": 1}}
    out.write_ledger(shard(OTHER), ["caption"], {}, RUN1)
    out.write_ledger(shard(SHARD, rows=3), ["caption", "qa"], counts, RUN2)
    assert out.ledger_ids() == [SHARD, OTHER]
    assert out.read_ledger([SHARD, "0123456789ab-000009"]) == {
        SHARD: {"shard": SHARD, "path": "/m/a.jsonl", "index": 0, "row_start": 0, "rows": 3, "checksum": "sum0",
                "tasks": ["caption", "qa"], "counts": counts, "run_id": RUN2}
    }  # fmt: skip
    out.remove_ledger(SHARD)
    out.remove_ledger(SHARD)  # already gone: fine
    assert out.ledger_ids() == [OTHER]
    assert out.part_files() == []  # the ledger is no part


def test_shard_keys_and_checksums(out):
    empty = out.shard_keys(SHARD)
    assert empty.num_rows == 0 and empty.column_names == ["row", "task", "status", "run_id", "clip", "file", "pos"]
    assert out.part_checksums(SHARD) == set()
    a = write_part(out, SHARD, RUN1, 0, [result(SHARD, r, "caption", RUN1) for r in (0, 1, 2)], "c-old")
    b = write_part(out, SHARD, RUN2, 0, [result(SHARD, 1, t, RUN2, Status.FETCH_ERROR) for t in ("qa", "x")], "c-new")
    write_part(out, OTHER, RUN1, 0, [result(OTHER, 9, "caption", RUN1)], "c-other")
    keys = out.shard_keys(SHARD).to_pylist()
    assert keys == [
        {"row": 0, "task": "caption", "status": "ok", "run_id": RUN1, "clip": None, "file": a, "pos": 0},
        {"row": 1, "task": "caption", "status": "ok", "run_id": RUN1, "clip": None, "file": a, "pos": 1},
        {"row": 2, "task": "caption", "status": "ok", "run_id": RUN1, "clip": None, "file": a, "pos": 2},
        {"row": 1, "task": "qa", "status": "fetch_error", "run_id": RUN2, "clip": None, "file": b, "pos": 0},
        {"row": 1, "task": "x", "status": "fetch_error", "run_id": RUN2, "clip": None, "file": b, "pos": 1},
    ]
    assert out.part_checksums(SHARD) == {"c-old", "c-new"}
    assert out.part_checksums(OTHER) == {"c-other"}


def test_status_counts(out):
    rows = [result(SHARD, i, t, RUN1, s) for i, s in enumerate(Status) for t in ("caption", "qa")[: 1 + i % 2]]
    write_part(out, SHARD, RUN1, 0, rows, "c")
    expected: dict[str, Counter] = {}
    for r in rows:
        expected.setdefault(r["task"], Counter())[r["status"]] += 1
    assert status_counts(out.shard_keys(SHARD)) == {t: dict(c) for t, c in expected.items()}
    assert status_counts(out.shard_keys(OTHER)) == {}


# -- reconcile --------------------------------------------------------------------------------


def winners(parts: list[tuple[str, int, list[dict]]]) -> set[tuple]:
    """The reference: per (row, task) an ok row beats a failure, then the newer run, then the
    later file of a run, then the later row of a file."""
    best: dict[tuple, tuple] = {}
    for run_id, seq, rows in parts:
        for pos, r in enumerate(rows):
            rank = (r["status"] == Status.OK, run_id, seq, pos)
            if (r["row"], r["task"]) not in best or rank > best[(r["row"], r["task"])][0]:
                best[(r["row"], r["task"])] = (rank, (r["row"], r["task"], r["status"], r["run_id"], r["error"]))
    return {v for _, v in best.values()}


def test_reconcile_rules(out):
    parts = [
        (RUN1, 0, [result(SHARD, 0, "caption", RUN1), result(SHARD, 1, "caption", RUN1, Status.FETCH_ERROR),
                   result(SHARD, 2, "caption", RUN1, Status.ENGINE_ERROR), result(SHARD, 3, "caption", RUN1)]),
        (RUN1, 1, [result(SHARD, 4, "caption", RUN1, Status.DECODE_ERROR), result(SHARD, 0, "qa", RUN1)]),
        (RUN2, 0, [result(SHARD, 1, "caption", RUN2), result(SHARD, 2, "caption", RUN2, Status.DECODE_ERROR),
                   result(SHARD, 3, "caption", RUN2, Status.ENGINE_ERROR), result(SHARD, 0, "qa", RUN2)]),
        (RUN3, 0, [result(SHARD, 4, "caption", RUN3, Status.TOO_LARGE)]),
    ]  # fmt: skip
    paths = [write_part(out, SHARD, run, seq, rows, "c") for run, seq, rows in parts]
    other = write_part(out, OTHER, RUN1, 0, [result(OTHER, 0, "caption", RUN1, Status.FETCH_ERROR)], "o")
    write_part(out, OTHER, RUN2, 0, [result(OTHER, 0, "caption", RUN2)], "o")
    before = {p: read_file(out, p) for p in paths + [other]}

    dropped, keys = out.reconcile_shard(SHARD)

    assert dropped == 5
    kept = {(r["row"], r["task"], r["status"], r["run_id"], r["error"]) for r in read_parts(out, SHARD)}
    assert kept == winners(parts)
    by_key = {(r[0], r[1]): r for r in kept}
    assert by_key[(0, "caption")][3] == RUN1  # untouched
    assert by_key[(1, "caption")][2:4] == ("ok", RUN2)  # a retry's ok replaces the failure
    assert by_key[(3, "caption")][2:4] == ("ok", RUN1)  # ok beats a newer failure
    assert by_key[(2, "caption")][2:4] == ("decode_error", RUN2)  # the newest failure wins
    assert by_key[(4, "caption")][2:4] == ("too_large", RUN3)
    assert by_key[(0, "qa")][3] == RUN2  # per task: the newest ok
    # Run 1's second file lost both rows: deleted, not left empty; the others keep their checksum.
    assert names(out.part_files(SHARD)) == [part_name(SHARD, r, 0) for r in (RUN1, RUN2, RUN3)]
    assert out.part_checksums(SHARD) == {"c"}
    for p in out.part_files(SHARD):
        assert read_file(out, p).schema.equals(before[p].schema, check_metadata=False)
    # Another shard's duplicate is not this call's business.
    assert read_file(out, other).equals(before[other]) and len(out.part_files(OTHER)) == 2
    assert not any(n.endswith(".tmp") for n in listing(out))
    # The keys returned are what remains.
    assert key_rows(keys.to_pylist()) == key_rows(out.shard_keys(SHARD).to_pylist())
    assert out.reconcile_shard(SHARD)[0] == 0  # idempotent
    assert {(r["row"], r["task"], r["status"], r["run_id"], r["error"]) for r in read_parts(out, SHARD)} == kept


def test_reconcile_untouched_files_are_not_rewritten(out, monkeypatch):
    write_part(out, SHARD, RUN1, 0, [result(SHARD, 0, "caption", RUN1)], "c")
    write_part(out, SHARD, RUN1, 1, [result(SHARD, 1, "caption", RUN1, Status.FETCH_ERROR)], "c")
    write_part(out, SHARD, RUN2, 0, [result(SHARD, 1, "caption", RUN2)], "c")
    writes = []
    real = out.write_atomic
    monkeypatch.setattr(out, "write_atomic", lambda name, *a, **k: (writes.append(name), real(name, *a, **k))[1])
    assert out.reconcile_shard(SHARD)[0] == 1
    assert writes == []  # the loser's file held only the loser: deleted
    assert names(out.part_files(SHARD)) == [part_name(SHARD, RUN1, 0), part_name(SHARD, RUN2, 0)]


def test_reconcile_duplicate_key_within_one_file(out):
    rows = [
        result(SHARD, 0, "caption", RUN1, Status.ENGINE_ERROR, error="first"),
        result(SHARD, 1, "caption", RUN1),
        result(SHARD, 0, "caption", RUN1, Status.ENGINE_ERROR, error="second"),
    ]
    write_part(out, SHARD, RUN1, 0, rows, "c")
    dropped, keys = out.reconcile_shard(SHARD)
    assert dropped == 1
    assert sorted((r["row"], r["error"]) for r in read_parts(out, SHARD)) == [(0, "second"), (1, None)]
    assert keys.num_rows == 2


@pytest.mark.parametrize("seed", range(3))
def test_reconcile_matches_the_reference(out, seed):
    rnd = random.Random(seed)
    parts = []
    for run in (RUN1, RUN2, RUN3):
        for seq in range(rnd.randint(1, 3)):
            rows = [
                result(SHARD, rnd.randrange(6), rnd.choice(["caption", "qa"]), run,
                       rnd.choice([Status.OK, Status.OK, Status.FETCH_ERROR, Status.ENGINE_ERROR]), error=f"{run}/{seq}/{i}")
                for i in range(rnd.randint(1, 6))
            ]  # fmt: skip
            for r in rows:
                r["error"] = None if r["status"] == Status.OK else r["error"]
            parts.append((run, seq, rows))
            write_part(out, SHARD, run, seq, rows, "c")
    total = sum(len(rows) for _, _, rows in parts)
    expected = winners(parts)
    dropped, keys = out.reconcile_shard(SHARD)
    after = read_parts(out, SHARD)
    assert {(r["row"], r["task"], r["status"], r["run_id"], r["error"]) for r in after} == expected
    assert len(after) == len(expected) == total - dropped == keys.num_rows


def clip(row: int, c: int, n: int, run: str, status: Status = Status.OK, task: str = "caption") -> dict:
    return result(SHARD, row, task, run, status, clip=c, clip_start=float(c), clip_end=c + 1.0, num_clips=n)


def test_reconcile_keeps_the_winning_runs_clips_one_per_clip(out):
    write_part(out, SHARD, RUN1, 0, [
        clip(0, 0, 3, RUN1), clip(0, 1, 3, RUN1, Status.FETCH_ERROR), clip(0, 2, 3, RUN1),  # a clip failed...
        result(SHARD, 1, "caption", RUN1, Status.FETCH_ERROR),  # the whole video failed
        clip(2, 0, 2, RUN1), clip(2, 1, 2, RUN1),
    ], "c")  # fmt: skip
    write_part(out, SHARD, RUN2, 0, [
        clip(0, 0, 3, RUN2), clip(0, 1, 3, RUN2), clip(0, 2, 3, RUN2),  # ...retried: the whole pair again
        clip(1, 0, 2, RUN2), clip(1, 1, 2, RUN2),  # retried: it opened this time
        result(SHARD, 2, "caption", RUN2, Status.FETCH_ERROR),  # ok beats a newer failure
    ], "c")  # fmt: skip
    write_part(out, SHARD, RUN2, 1, [clip(0, 1, 3, RUN2)], "c")  # a repeat within the run
    dropped, keys = out.reconcile_shard(SHARD)
    got = sorted((r["row"], r["clip"], r["run_id"], r["status"]) for r in read_parts(out, SHARD))
    assert got == [(0, 0, RUN2, "ok"), (0, 1, RUN2, "ok"), (0, 2, RUN2, "ok"), (1, 0, RUN2, "ok"), (1, 1, RUN2, "ok"),
                   (2, 0, RUN1, "ok"), (2, 1, RUN1, "ok")]  # fmt: skip
    assert dropped == 3 + 1 + 1 + 1 == 13 - keys.num_rows
    assert out.reconcile_shard(SHARD)[0] == 0


def test_done_pairs_and_pair_counts_with_clips(out):
    write_part(out, SHARD, RUN1, 0, [
        clip(0, 0, 2, RUN1), clip(0, 1, 2, RUN1, Status.DECODE_ERROR),  # one clip unsettled: redo the pair
        clip(1, 0, 2, RUN1), clip(1, 1, 2, RUN1, Status.INVALID_ROW),  # past the end: settled
        result(SHARD, 2, "caption", RUN1, Status.ENGINE_ERROR), result(SHARD, 2, "qa", RUN1),
    ], "c")  # fmt: skip
    keys = out.shard_keys(SHARD)
    assert done_pairs(keys, settled_only=False) == {(0, "caption"), (1, "caption"), (2, "caption"), (2, "qa")}
    assert done_pairs(keys, settled_only=True) == {(1, "caption"), (2, "qa")}
    assert pair_counts(keys) == {"caption": 3, "qa": 1}
    assert status_counts(keys)["caption"] == {"ok": 2, "decode_error": 1, "invalid_row": 1, "engine_error": 1}


def test_parts_written_before_clips_existed_read_as_rows_without_clips(out):
    old = table([result(SHARD, r, "caption", RUN1) for r in (0, 1)]).drop_columns(list(CLIP_COLUMNS))
    out.write_atomic(part_name(SHARD, RUN1, 0), old, metadata={CHECKSUM_KEY: b"c"})
    write_part(out, SHARD, RUN2, 0, [result(SHARD, 1, "caption", RUN2)], "c")
    assert out.shard_keys(SHARD)["clip"].to_pylist() == [None, None, None]
    assert out.reconcile_shard(SHARD)[0] == 1


# -- the marker -------------------------------------------------------------------------------


def test_success_marker(out):
    out.clear_success()  # absent: no error
    write_part(out, SHARD, RUN1, 0, [result(SHARD, 0, "caption", RUN1)], "c")
    out.write_success({"finished": True, "run_id": RUN1})
    assert json.loads(out.fs.cat_file(out.path("_SUCCESS"))) == {"finished": True, "run_id": RUN1}
    assert len(out.part_files()) == 1  # the marker is no part
    out.clear_success()
    assert not out.fs.exists(out.path("_SUCCESS")) and len(out.part_files()) == 1


def test_results_read_back_as_one_dataset(tmp_path):
    """Readers skip `_` and `.` names: reading the output dir yields exactly the results."""
    out = OutputDir(str(tmp_path / "out"))
    write_part(out, SHARD, RUN1, 0, [result(SHARD, 0, "caption", RUN1)], "c")
    write_part(out, OTHER, RUN1, 0, [result(OTHER, 4, "qa", RUN1, Status.FETCH_ERROR)], "c")
    out.write_ledger(shard(SHARD), ["caption"], {}, RUN1)
    out.write_json("_state/job.json", {})
    out.write_success({"finished": True})
    (tmp_path / "out" / ".part-x.parquet.tmp").write_bytes(b"partial")
    got = pq.read_table(str(tmp_path / "out"))
    assert sorted(zip(got["shard"].to_pylist(), got["row"].to_pylist())) == [(SHARD, 0), (OTHER, 4)]
