"""Manifest reading: every manifest row becomes exactly one ManifestRow, in a deterministic order."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import ManifestError, ManifestRow, read_manifest

# -- helpers / fixtures ----------------------------------------------------------------


def _line(rec: Any) -> str:
    """A raw string is written verbatim (broken lines); anything else as one JSON line."""
    return rec if isinstance(rec, str) else json.dumps(rec)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_line(r) + "\n" for r in records))
    return path


def read(path: Any, **kw: Any) -> list[ManifestRow]:
    return read_manifest(InputConfig(path=str(path), **kw))


@pytest.fixture
def records() -> list[dict[str, Any]]:
    """Valid records covering every media shape."""
    return [
        {"id": "img1", "image": "s3://b/1.jpg", "question": "What is it?"},
        {"id": "multi", "image": ["s3://b/2.jpg", "s3://b/3.jpg"]},
        {"id": "vid", "video": "s3://b/v.mp4", "start": 1.5, "end": 4},
        {"id": "vid-open", "video": "s3://b/w.mp4", "start": 2},
    ]


def assert_matches(rows: list[ManifestRow], recs: list[dict[str, Any]]) -> None:
    assert [r.id for r in rows] == [str(r["id"]) for r in recs]
    for row, rec in zip(rows, recs):
        assert row.error is None, (row.id, row.error)
        img = rec.get("image")
        assert row.images == ([img] if isinstance(img, str) else (img or []))
        assert row.video == rec.get("video")
        assert row.start == (None if rec.get("start") is None else float(rec["start"]))
        assert row.end == (None if rec.get("end") is None else float(rec["end"]))
        assert row.question == rec.get("question")
        assert row.media == ("video" if rec.get("video") else "image")


@pytest.fixture
def mem_root():
    """A fresh `memory://` prefix, removed afterwards (the memory filesystem is process-global)."""
    root = f"memory://manifest-test-{uuid.uuid4().hex}"
    fs, path = fsspec.core.url_to_fs(root)
    yield root
    if fs.exists(path):
        fs.rm(path, recursive=True)


# -- formats and locations ------------------------------------------------------------------


def test_jsonl_rows_in_order(tmp_path, records):
    rows = read(write_jsonl(tmp_path / "m.jsonl", records))
    assert_matches(rows, records)


def test_parquet_rows_in_order(tmp_path, records):
    # a parquet column has one type: single URLs are stored as one-element lists
    norm = [{**r, "image": ([r["image"]] if isinstance(r.get("image"), str) else r.get("image"))} for r in records]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.list_(pa.string())),
            ("video", pa.string()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("question", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(norm, schema=schema)  # from_pylist alone takes the keys of row 0 only
    pq.write_table(table, tmp_path / "m.parquet")
    rows = read(tmp_path / "m.parquet")
    assert_matches(rows, records)


def test_csv_rows_in_order(tmp_path):
    (tmp_path / "m.csv").write_text("id,image,video,start,end,question\na,x.jpg,,,,Q1\nb,,v.mp4,1.5,3,\nc,,,,,\n")
    rows = read(tmp_path / "m.csv")
    assert [r.id for r in rows] == ["a", "b", "c"]
    assert (rows[0].images, rows[0].video, rows[0].question, rows[0].error) == (["x.jpg"], None, "Q1", None)
    assert (rows[1].video, rows[1].start, rows[1].end, rows[1].question, rows[1].error) == (
        "v.mp4",
        1.5,
        3.0,
        None,
        None,
    )
    assert rows[2].error is not None and rows[2].media == "none"


def test_gzipped_jsonl_file(tmp_path, records):
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    assert_matches(read(path), records)


def test_memory_url(mem_root, records):
    url = f"{mem_root}/m.jsonl"
    with fsspec.open(url, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    assert_matches(read(url), records)


def test_memory_directory_sorted(mem_root):
    for name, ids in [("b.jsonl", ["b1"]), ("a.jsonl", ["a1", "a2"])]:
        with fsspec.open(f"{mem_root}/{name}", "w") as f:
            f.write("".join(json.dumps({"id": i, "image": "x.jpg"}) + "\n" for i in ids))
    assert [r.id for r in read(mem_root)] == ["a1", "a2", "b1"]


@pytest.fixture
def three_files(tmp_path) -> Path:
    """Written out of name order, plus files a directory read must skip."""
    d = tmp_path / "manifests"
    write_jsonl(d / "c.jsonl", [{"id": f"c{i}", "image": "x.jpg"} for i in range(3)])
    write_jsonl(d / "a.jsonl", [{"id": f"a{i}", "image": "x.jpg"} for i in range(3)])
    write_jsonl(d / "b" / "nested.jsonl", [{"id": f"b{i}", "image": "x.jpg"} for i in range(3)])
    (d / "README.txt").write_text("not a manifest\n")
    (d / "_SUCCESS").write_text("{}")
    return d


def test_directory_reads_manifest_files_in_sorted_order(three_files):
    rows = read(three_files)
    assert [r.id for r in rows] == [f"{p}{i}" for p in "abc" for i in range(3)]
    assert all(r.error is None for r in rows)


def test_glob_reads_matches_in_sorted_order(three_files):
    rows = read(f"{three_files}/*.jsonl")
    assert [r.id for r in rows] == [f"{p}{i}" for p in "ac" for i in range(3)]


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(ManifestError, match="matches no manifest files"):
        read(tmp_path / "*.jsonl")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="matches no manifest files"):
        read(tmp_path / "empty")


def test_missing_path(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read(tmp_path / "nope.jsonl")


def test_unknown_extension_needs_format(tmp_path, records):
    path = write_jsonl(tmp_path / "m.txt", records)
    with pytest.raises(ManifestError, match="input.format"):
        read(path)
    assert_matches(read(path, format="jsonl"), records)


def test_explicit_format_overrides_extension(tmp_path):
    (tmp_path / "m.jsonl").write_text("id,image\nx,a.jpg\n")
    rows = read(tmp_path / "m.jsonl", format="csv")
    assert [(r.id, r.images, r.error) for r in rows] == [("x", ["a.jpg"], None)]


def test_directory_of_gzipped_jsonl(tmp_path, records):
    d = tmp_path / "gz"
    d.mkdir()
    (d / "m.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    assert_matches(read(d), records)


def test_gzipped_csv_file(tmp_path):
    (tmp_path / "m.csv.gz").write_bytes(gzip.compress(b"id,image\nx,a.jpg\n"))
    assert [(r.id, r.images) for r in read(tmp_path / "m.csv.gz")] == [("x", ["a.jpg"])]


def test_csv_ids_are_kept_verbatim(tmp_path):
    (tmp_path / "m.csv").write_text("id,image\n007,a.jpg\n0042,b.jpg\n")
    assert [r.id for r in read(tmp_path / "m.csv")] == ["007", "0042"]


# -- invalid rows never vanish -----------------------------------------------------------------

INVALID = [
    # (line, substring the error must contain)
    ('{"id": "broken", "image": ', "not valid JSON"),
    ('["a", "b"]', "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    ({"id": "both", "image": "a.jpg", "video": "v.mp4"}, "not both"),
    ({"id": "neither", "question": "q"}, "no 'image' or 'video'"),
    ({"id": "blank-media", "image": "  ", "video": ""}, "no 'image' or 'video'"),
    ({"id": "empty-list", "image": []}, "non-empty list"),
    ({"id": "int-in-list", "image": ["a.jpg", 3]}, "non-empty list"),
    ({"id": "empty-in-list", "image": ["a.jpg", ""]}, "non-empty list"),
    ({"id": "image-number", "image": 5}, "non-empty list"),
    ({"id": "video-list", "video": ["v.mp4"]}, "'video' must be a URL"),
    ({"id": "start-text", "video": "v.mp4", "start": "abc"}, "start='abc'"),
    ({"id": "end-list", "video": "v.mp4", "end": [1]}, "end=[1]"),
    ({"id": "end-before", "video": "v.mp4", "start": 5, "end": 2}, "is not after"),
    ({"id": "end-equal", "video": "v.mp4", "start": 3, "end": 3}, "is not after"),
]


@pytest.mark.parametrize("line,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_row_is_kept_in_place(tmp_path, line, message):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"id": "before", "image": "a.jpg"}, line, {"id": "after", "image": "b.jpg"}]
    )
    rows = read(path)
    assert len(rows) == 3
    assert rows[0].id == "before" and rows[0].error is None
    assert rows[2].id == "after" and rows[2].error is None
    bad = rows[1]
    assert bad.error is not None and message in bad.error
    expected_id = line["id"] if isinstance(line, dict) else f"{path}#2"
    assert bad.id == expected_id


def test_missing_id_gets_fallback_id_with_physical_line_number(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [{"id": "a", "image": "x.jpg"}, "", {"image": "y.jpg"}, {"id": None, "image": "z"}, {"id": " ", "image": "z"}],
    )
    rows = read(path)
    assert [r.id for r in rows] == ["a", f"{path}#3", f"{path}#4", f"{path}#5"]
    assert rows[0].error is None
    assert all(r.error == "missing 'id'" for r in rows[1:])


def test_missing_id_uses_configured_column_name(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "image": "x.jpg"}])
    [row] = read(path, id_column="key")
    assert row.id == f"{path}#1" and row.error == "missing 'key'"


def test_numeric_id_is_stringified(tmp_path):
    [row] = read(write_jsonl(tmp_path / "m.jsonl", [{"id": 17, "image": "x.jpg"}]))
    assert row.id == "17" and row.error is None


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('\n{"id": "a", "image": "x"}\n   \n\t\n{"id": "b", "image": "y"}\n\n')
    assert [(r.id, r.error) for r in read(path)] == [("a", None), ("b", None)]


def test_duplicate_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "a", "image": "1.jpg"},
            {"id": "b", "image": "2.jpg"},
            {"id": "a", "image": "3.jpg"},
            {"id": "a", "image": "4.jpg"},
        ],
    )
    rows = read(path)
    assert len(rows) == 4
    assert (rows[0].id, rows[0].error, rows[0].images) == ("a", None, ["1.jpg"])
    assert (rows[1].id, rows[1].error) == ("b", None)
    for dup in rows[2:]:
        assert dup.error is not None and "duplicate" in dup.error
        assert dup.id != "a" and dup.id.startswith("a#dup")
    assert len({r.id for r in rows}) == 4  # every row keeps a distinct output key


def test_duplicate_ids_across_files(three_files):
    write_jsonl(three_files / "d.jsonl", [{"id": "a0", "image": "x.jpg"}])
    rows = read(three_files)
    assert rows[0].id == "a0" and rows[0].error is None
    assert rows[-1].error is not None and "duplicate" in rows[-1].error
    assert len({r.id for r in rows}) == len(rows) == 10


@pytest.mark.parametrize(
    "first,second",
    [
        ({"id": "a", "image": "x.jpg"}, {"id": "a"}),  # valid then invalid
        ({"id": "a"}, {"id": "a", "video": 3}),  # invalid twice
    ],
    ids=["valid-then-invalid", "invalid-twice"],
)
def test_duplicate_id_on_invalid_row_gets_distinct_id(tmp_path, first, second):
    rows = read(write_jsonl(tmp_path / "m.jsonl", [first, second]))
    assert len(rows) == 2 and rows[1].error is not None
    assert rows[0].id != rows[1].id


def test_limit(three_files):
    assert [r.id for r in read(three_files, limit=2)] == ["a0", "a1"]
    # the limit spans file boundaries, in sorted order
    assert [r.id for r in read(three_files, limit=4)] == ["a0", "a1", "a2", "b0"]
    assert len(read(three_files, limit=100)) == 9


def test_limit_counts_invalid_rows(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", ["not json", {"id": "a", "image": "x"}, {"id": "b", "image": "y"}])
    rows = read(path, limit=2)
    assert [r.id for r in rows] == [f"{path}#1", "a"]


def test_configurable_column_names(tmp_path):
    cols = dict(
        id_column="key",
        image_column="img",
        video_column="clip",
        question_column="q",
        start_column="t0",
        end_column="t1",
    )
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"key": "i", "img": "a.jpg", "q": "why?"},
            {"key": "v", "clip": "v.mp4", "t0": 1, "t1": 2},
            {"key": "default-names", "image": "a.jpg", "question": "ignored"},
            {"key": "bad", "clip": "v.mp4", "t0": 3, "t1": 1},
        ],
    )
    rows = read(path, **cols)
    assert (rows[0].id, rows[0].images, rows[0].question, rows[0].error) == ("i", ["a.jpg"], "why?", None)
    assert (rows[1].id, rows[1].video, rows[1].start, rows[1].end, rows[1].error) == ("v", "v.mp4", 1.0, 2.0, None)
    assert rows[2].error is not None and "'img'" in rows[2].error and "'clip'" in rows[2].error
    assert rows[3].error is not None and "t1=" in rows[3].error and "t0=" in rows[3].error


def test_question_is_stringified_and_blank_is_none(tmp_path):
    rows = read(
        write_jsonl(
            tmp_path / "m.jsonl",
            [
                {"id": "n", "image": "a", "question": 42},
                {"id": "b", "image": "a", "question": "  "},
            ],
        )
    )
    assert [r.question for r in rows] == ["42", None]


# -- passthrough ---------------------------------------------------------------------------

PASS_VALUES = {"s": "hello", "i": 3, "f": 2.5, "l": ["a", 1], "d": {"k": [1, 2]}, "b": True}


@pytest.mark.parametrize("valid", [True, False], ids=["valid-row", "invalid-row"])
def test_passthrough_values(tmp_path, valid):
    rec = {"id": "a", **PASS_VALUES}
    if valid:
        rec["image"] = "x.jpg"
    cols = (*PASS_VALUES, "absent")
    [row] = read(write_jsonl(tmp_path / "m.jsonl", [rec]), passthrough=cols)
    assert (row.error is None) == valid
    assert row.passthrough["s"] == "hello"  # strings are kept, not JSON-quoted
    for k in ("i", "f", "l", "d", "b"):
        assert row.passthrough[k] == json.dumps(PASS_VALUES[k])
        assert json.loads(row.passthrough[k]) == PASS_VALUES[k]
    assert row.passthrough["absent"] is None
    assert set(row.passthrough) == set(cols)


def test_passthrough_from_parquet(tmp_path):
    pq.write_table(
        pa.table({"id": ["a", "b"], "image": ["x", "y"], "n": [1, None], "tags": [["t"], []]}), tmp_path / "m.parquet"
    )
    rows = read(tmp_path / "m.parquet", passthrough=("n", "tags"))
    assert [r.passthrough for r in rows] == [{"n": "1", "tags": '["t"]'}, {"n": None, "tags": "[]"}]
