"""Shards: manifest files cut by row number, each readable on its own.

The oracle is the writer: tests/support/manifests.py counts the line of every record as it
writes the file, so each shard, read alone, must yield exactly its slice of those records
with their record numbers and lines, whatever the format, compression or line endings.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import cut_shards, split_of, split_rows
from internvl_batch.job.readers import text as text_reader
from internvl_batch.job.shards import Shard, is_record, shard_id
from tests.support.manifests import (
    BLANK,
    Written,
    append_jsonl,
    manifest_file,
    record,
    write_csv,
    write_jsonl,
    write_parquet,
)

SHARD_ROWS = [1, 2, 3, 5, 100]

# Every kind of line a JSONL manifest has: blank and whitespace-only lines (never records),
# a record indented by whitespace, rows without an id, broken JSON, a non-object.
JSONL_ITEMS = [
    BLANK,
    record(0),
    "   ",
    record(1, id=None),
    "\t",
    record(2),
    BLANK,
    BLANK,
    "{broken",
    record(3),
    "  " + json.dumps(record(4)),
    record(5),
    "[1, 2]",
    record(6, id=None),
    " \t ",
    record(7),
    record(8),
]


def expected_id(rec: Any, path: str, line: int) -> str:
    """The id a record must get: its own, else `path#line` (also for unparseable lines)."""
    if isinstance(rec, str):
        try:
            rec = json.loads(rec)
        except json.JSONDecodeError:
            rec = None
    if isinstance(rec, dict) and rec.get("id") not in (None, ""):
        return str(rec["id"])
    return f"{path}#{line}"


def read_alone(fs, file, shard: Shard, cfg: InputConfig) -> list[tuple[int, int, str]]:
    return [(n, line, row.id) for n, line, row in split_rows(fs, split_of(file, [shard]), cfg)]


def check_every_shard(written: Written, shard_rows: int, **cfg: Any) -> list[Shard]:
    """Each shard, read alone, yields exactly its records; together they cover the file once."""
    fs, file = manifest_file(written.path)
    config = InputConfig(path=str(written.path), **cfg)
    shards = cut_shards(fs, file, shard_rows)
    expected = [(n, line, expected_id(rec, file.path, line)) for n, (line, rec) in enumerate(written.records)]
    assert [s.index for s in shards] == list(range(len(shards)))
    assert [s.id for s in shards] == [shard_id(file, k) for k in range(len(shards))]
    assert all(s.path == file.path for s in shards)
    for s in shards:
        mine = expected[s.index * shard_rows : (s.index + 1) * shard_rows]
        assert (s.row_start, s.rows, s.line_start) == (mine[0][0], len(mine), mine[0][1])
        assert read_alone(fs, file, s, config) == mine, s
    assert sum(s.rows for s in shards) == len(expected)
    return shards


# -- JSONL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_rows", SHARD_ROWS)
@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"newline": "\r\n"},
        {"final_newline": False},
        {"newline": "\r\n", "final_newline": False},
        {"compress": True},
    ],
    ids=["lf", "crlf", "no-final-newline", "crlf-no-final-newline", "gz"],
)
def test_jsonl_shards_read_alone(tmp_path, layout, shard_rows):
    name = "m.jsonl.gz" if layout.get("compress") else "m.jsonl"
    written = write_jsonl(tmp_path / name, JSONL_ITEMS, **layout)
    shards = check_every_shard(written, shard_rows)
    _, file = manifest_file(written.path)
    if file.seekable:
        # Byte ranges tile the file from the first record on: no record read twice or lost.
        assert all(a.byte_end == b.byte_start for a, b in zip(shards, shards[1:]))
        assert shards[-1].byte_end == written.path.stat().st_size
    else:
        assert file.compression == "gzip" and all(s.byte_start is None and s.byte_end is None for s in shards)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_jsonl_scan_is_independent_of_chunk_size(tmp_path, monkeypatch, chunk):
    """Lines cut across the planner's read chunks are found whole."""
    written = write_jsonl(tmp_path / "m.jsonl", JSONL_ITEMS, newline="\r\n", final_newline=False)
    fs, file = manifest_file(written.path)
    whole = cut_shards(fs, file, 3)
    monkeypatch.setattr(text_reader, "_CHUNK", chunk)
    assert cut_shards(fs, file, 3) == whole
    check_every_shard(written, 3)


def test_jsonl_rows_keep_their_errors(tmp_path):
    written = write_jsonl(tmp_path / "m.jsonl", JSONL_ITEMS)
    fs, file = manifest_file(written.path)
    [shard] = cut_shards(fs, file, 100)
    rows = {line: row for _, line, row in split_rows(fs, split_of(file, [shard]), InputConfig(path=str(written.path)))}
    for line, rec in written.records:
        if rec == "{broken":
            assert "is not valid JSON" in rows[line].error
        elif rec == "[1, 2]":
            assert "is not a JSON object" in rows[line].error
        elif isinstance(rec, dict) and "id" not in rec:
            assert rows[line].error == "missing 'id'"
        else:
            assert rows[line].error is None, (line, rec, rows[line].error)


def test_empty_and_blank_only_files_have_no_shards(tmp_path):
    for name, items in [("empty.jsonl", []), ("blank.jsonl", [BLANK, "  ", "\t"])]:
        fs, file = manifest_file(write_jsonl(tmp_path / name, items).path)
        assert cut_shards(fs, file, 2) == []


@pytest.mark.parametrize(
    "line",
    [b"", b"\n", b"\r\n", b" \n", b"\t \r\n", b"\x0b\x0c\n", b"{}\n", b" {}\n", b"\t{}", b"x", b"  x  \r\n"],
)
def test_is_record_means_not_blank(line):
    assert is_record(line) == bool(line.strip())


# -- CSV ---------------------------------------------------------------------------------------

CSV_ROWS = [
    ["a1", "s3://b/1.jpg", "plain"],
    BLANK,
    ["a2", "s3://b/2.jpg", "a question\nover two lines"],
    BLANK,
    BLANK,
    ["", "s3://b/3.jpg", "no id"],
    ["a4", "s3://b/4.jpg", 'quoted "inner", comma\nand\nthree lines'],
    ["a5", "s3://b/5.jpg", ""],
    BLANK,
    ["a6", "s3://b/6.jpg", "last"],
]


@pytest.mark.parametrize("shard_rows", SHARD_ROWS)
def test_csv_shards_read_alone(tmp_path, shard_rows):
    written = write_csv(tmp_path / "m.csv", ["id", "image", "question"], CSV_ROWS)
    assert written.lines == [2, 4, 8, 9, 12, 14]  # the writer's own count, checked once
    check_every_shard(written, shard_rows)


def test_csv_multiline_fields_survive(tmp_path):
    written = write_csv(tmp_path / "m.csv", ["id", "image", "question"], CSV_ROWS)
    fs, file = manifest_file(written.path)
    cfg = InputConfig(path=str(written.path))
    rows = [row for s in cut_shards(fs, file, 2) for _, _, row in split_rows(fs, split_of(file, [s]), cfg)]
    with_id = [rec for _, rec in written.records if rec["id"]]  # a row without an id is not parsed further
    assert [row.question for row in rows if row.error is None] == [rec["question"] or None for rec in with_id]


def test_csv_header_is_part_of_every_checksum(tmp_path):
    rows = [[f"a{i}", f"s3://b/{i}.jpg"] for i in range(6)]
    fs, file = manifest_file(write_csv(tmp_path / "m.csv", ["id", "image"], rows).path)
    before = cut_shards(fs, file, 2)
    fs, file = manifest_file(write_csv(tmp_path / "m.csv", ["id", "video"], rows).path)
    after = cut_shards(fs, file, 2)
    assert [s.rows for s in after] == [s.rows for s in before]
    assert all(a.checksum != b.checksum for a, b in zip(after, before))


# -- parquet -----------------------------------------------------------------------------------

PARQUET_RECORDS = [record(i, id=None if i in (3, 8) else f"p{i}") for i in range(10)]


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 4, 5, 7, 10, 100])
def test_parquet_shards_read_alone(tmp_path, shard_rows):
    group = 4  # row groups [0, 4) [4, 8) [8, 10): shards span and split them
    written = write_parquet(tmp_path / "m.parquet", PARQUET_RECORDS, row_group_size=group)
    shards = check_every_shard(written, shard_rows)
    for s in shards:
        first, last = s.row_start // group, (s.row_start + s.rows - 1) // group
        assert s.row_groups == tuple(range(first, last + 1))
        assert s.rg_row_start == first * group
        assert s.byte_start is None and s.byte_end is None


# -- checksums -------------------------------------------------------------------------------


def plan_of(written: Written, shard_rows: int) -> list[Shard]:
    fs, file = manifest_file(written.path)
    return cut_shards(fs, file, shard_rows)


def changed_shards(before: list[Shard], after: list[Shard]) -> list[int]:
    assert [(s.id, s.rows) for s in before] == [(s.id, s.rows) for s in after]
    return [a.index for a, b in zip(before, after) if a.checksum != b.checksum]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "csv"])
def test_a_changed_row_changes_only_its_shards_checksum(tmp_path, fmt):
    records = [record(i) for i in range(10)]

    def write(recs):
        path = tmp_path / f"m.{fmt}"
        if fmt == "csv":
            return write_csv(path, ["id", "image"], [[r["id"], r["image"]] for r in recs])
        return write_jsonl(path, recs, compress=fmt.endswith(".gz"))

    before = plan_of(write(records), 3)
    assert plan_of(write(records), 3) == before  # stable across replans and rewrites
    for i in (0, 4, 9):
        edited = [dict(r) for r in records]
        edited[i]["image"] = edited[i]["image"].replace("bucket", "bucke7")  # same length, other bytes
        assert changed_shards(before, plan_of(write(edited), 3)) == [i // 3]


def test_a_changed_parquet_row_changes_its_shards_checksum(tmp_path):
    records = [record(i) for i in range(10)]
    before = plan_of(write_parquet(tmp_path / "m.parquet", records, 4), 2)
    assert plan_of(write_parquet(tmp_path / "m.parquet", records, 4), 2) == before
    edited = [dict(r) for r in records]
    edited[5]["image"] = "s3://elsewhere/a-much-longer-name.jpg"
    changed = changed_shards(before, plan_of(write_parquet(tmp_path / "m.parquet", edited, 4), 2))
    assert 5 // 2 in changed


@pytest.mark.xfail(strict=True, reason="design: parquet checksums are footer facts, blind to values moved in a group")
def test_parquet_checksum_sees_values_swapped_within_a_row_group(tmp_path):
    records = [record(i, image=f"s3://b/{i % 3}.jpg") for i in range(8)]
    before = plan_of(write_parquet(tmp_path / "m.parquet", records, 4), 4)
    swapped = [dict(r) for r in records]
    swapped[1]["image"], swapped[2]["image"] = records[2]["image"], records[1]["image"]
    assert changed_shards(before, plan_of(write_parquet(tmp_path / "m.parquet", swapped, 4), 4)) == [0]


def test_shard_round_trips_through_json(tmp_path):
    for s in plan_of(write_parquet(tmp_path / "m.parquet", PARQUET_RECORDS, 4), 3):
        assert Shard.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# -- appended rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("added", [1, 3, 9])
def test_appended_rows_keep_earlier_shards(tmp_path, added):
    written = write_jsonl(tmp_path / "m.jsonl", [record(0), BLANK, *[record(i) for i in range(1, 10)]])
    before = plan_of(written, 4)  # rows 4 4 2
    grown = append_jsonl(written, [record(i) for i in range(10, 10 + added)])
    fs, file = manifest_file(grown.path)
    after = cut_shards(fs, file, 4, prefix_rows={s.index: s.rows for s in before})
    assert [s.rows for s in after] == [4] * ((10 + added) // 4) + ([(10 + added) % 4] if (10 + added) % 4 else [])
    for old, new in zip(before, after):
        assert (new.id, new.row_start, new.line_start, new.byte_start) == (
            old.id,
            old.row_start,
            old.line_start,
            old.byte_start,
        )
        assert new.prefix_checksum == old.checksum
        if new.rows == old.rows:
            assert new.checksum == old.checksum and new.byte_end == old.byte_end
        else:
            assert new.checksum != old.checksum
    check_every_shard(grown, 4)


def test_prefix_checksum_tells_a_changed_prefix(tmp_path):
    recs = [record(i) for i in range(6)]
    before = plan_of(write_jsonl(tmp_path / "m.jsonl", recs), 4)  # rows 4 2
    recs[4]["question"] = "changed"
    recs += [record(6)]
    fs, file = manifest_file(write_jsonl(tmp_path / "m.jsonl", recs).path)
    after = cut_shards(fs, file, 4, prefix_rows={s.index: s.rows for s in before})
    assert after[0].prefix_checksum == before[0].checksum
    assert after[1].prefix_checksum != before[1].checksum


def test_prefix_longer_than_a_shrunk_shard(tmp_path):
    """A file cut shorter: the old row count is beyond the shard's end; there is no prefix."""
    recs = [record(i) for i in range(7)]
    before = plan_of(write_jsonl(tmp_path / "m.jsonl", recs), 4)  # rows 4 3
    fs, file = manifest_file(write_jsonl(tmp_path / "m.jsonl", recs[:5]).path)
    after = cut_shards(fs, file, 4, prefix_rows={s.index: s.rows for s in before})
    assert [s.rows for s in after] == [4, 1]
    assert after[0].prefix_checksum == before[0].checksum
    assert after[1].prefix_checksum is None
