"""Duplicate ids over the whole manifest: the map/reduce pieces called directly, and one run
of find_duplicates on a real local Ray cluster.

The oracle is the writer's record list: walk every record in rank order (shards with output
first, then manifest order), keep the first of each id; every later one is a loser. Rows
without an id (or unparseable ones) have ids of their own and are never duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job import dedup
from internvl_batch.job.dedup import _ids_of, _map, _partition, _reduce, _write, find_duplicates, shards_key
from internvl_batch.job.output import OutputDir
from internvl_batch.job.readers import cut_shards, list_files, split_of
from tests.support.manifests import BLANK, Written, write_csv, write_jsonl, write_parquet

SHARD_ROWS = 2


def rec(id: str | None, **kw) -> dict:
    r = {"id": id, "image": "s3://b/x.jpg", **kw}
    return {k: v for k, v in r.items() if v is not None}


@pytest.fixture
def manifest(tmp_path) -> tuple[Path, list[Written]]:
    root = tmp_path / "in"
    written = [
        # a.jsonl: x twice in shard 0, y across shards, a row without id, a broken line, an
        # invalid row that has an id (no media): its id still counts.
        write_jsonl(
            root / "a.jsonl",
            [rec("x"), rec("y"), rec("x"), BLANK, rec(None), "{broken", rec("y"), rec("z"), {"id": "v"}],
        ),  # fmt: skip
        write_csv(
            root / "b.csv",
            ["id", "image"],
            [["z", "s3://1"], ["q", "s3://2"], ["", "s3://3"], ["x", "s3://4"], BLANK, ["q", "s3://5"]],
        ),  # fmt: skip
        write_parquet(root / "c.parquet", [rec("q"), rec("w"), rec(None), rec("v"), rec("w")], row_group_size=2),
        write_jsonl(root / "d.jsonl.gz", [rec("u"), rec("u"), rec("k"), rec("x"), rec(None)], compress=True),
    ]
    return root, written


def shards_and_splits(root: Path):
    cfg = InputConfig(path=str(root))
    fs, files = list_files(cfg)
    shards, splits = [], []
    for f in files:
        mine = cut_shards(fs, f, SHARD_ROWS)
        shards += mine
        splits += [split_of(f, [s]) for s in mine]
    return cfg, fs, files, shards, splits


def ranks_of(shards, with_output: set[str]) -> dict[str, int]:
    """As the runner ranks them: shards with output first, then manifest order."""
    return {s.id: ((0 if s.id in with_output else 1) << 62) | (i << 32) for i, s in enumerate(shards)}


def occurrences(written: list[Written], files, shards) -> list[tuple[str, str, int]]:
    """(id, shard, row) of every record with an id of its own, from what the writers wrote."""
    by_file = {f.path: [s for s in shards if s.path == f.path] for f in files}
    occ = []
    for w, f in zip(sorted(written, key=lambda w: str(w.path)), files):
        assert str(w.path) == f.path
        for n, (_, r) in enumerate(w.records):
            r = json.loads(r) if isinstance(r, str) and r.startswith('{"') else r
            if isinstance(r, dict) and r.get("id"):
                occ.append((str(r["id"]), by_file[f.path][n // SHARD_ROWS].id, n))
    return occ


def expected_losers(occ, ranks) -> set[tuple[str, str, int]]:
    seen, losers = set(), set()
    for id_, shard, row in sorted(occ, key=lambda o: (ranks[o[1]], o[2])):
        if id_ in seen:
            losers.add((id_, shard, row))
        seen.add(id_)
    return losers


def losers_in(out: OutputDir, name: str) -> list[tuple[str, str, int]]:
    t = pq.read_table(out.path(name), filesystem=out.fs)
    return list(zip(t["id"].to_pylist(), t["shard"].to_pylist(), t["row"].to_pylist()))


# -- the pieces ----------------------------------------------------------------------------------


def test_ids_of_each_split(manifest):
    root, written = manifest
    cfg, fs, files, shards, splits = shards_and_splits(root)
    ranks = ranks_of(shards, set())
    occ = occurrences(written, files, shards)
    got = []
    for split in splits:
        t = _ids_of(fs, cfg, split, ranks)
        assert t.schema == dedup._ID_SCHEMA
        got += t.to_pylist()
    assert [(r["id"], r["shard"], r["row"]) for r in got] == occ
    start = {s.id: s.row_start for s in shards}
    assert all(r["rank"] == ranks[r["shard"]] + r["row"] - start[r["shard"]] for r in got)
    assert len({r["rank"] for r in got}) == len(got)  # ranks order every occurrence


def test_ids_of_a_split_read_from_the_top(manifest):
    root, written = manifest
    cfg, fs, files, shards, _ = shards_and_splits(root)
    gz = next(f for f in files if f.compression)
    mine = [s for s in shards if s.path == gz.path]
    t = _ids_of(fs, cfg, split_of(gz, [mine[1]]), ranks_of(shards, set()))
    assert list(zip(t["id"].to_pylist(), t["row"].to_pylist())) == [("k", 2), ("x", 3)]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_partitions_split_ids_not_occurrences(manifest, k):
    root, _ = manifest
    cfg, fs, _, shards, splits = shards_and_splits(root)
    table = _map((cfg.path, {}), cfg, splits, ranks_of(shards, set()), 1)
    parts = _partition(table, k)
    assert len(parts) == k
    assert sorted(r["rank"] for p in parts for r in p.to_pylist()) == sorted(table["rank"].to_pylist())
    owners = {}
    for i, p in enumerate(parts):
        for id_ in p["id"].to_pylist():
            assert owners.setdefault(id_, i) == i  # every occurrence of an id in one partition


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_output", [set(), {"b.csv/0", "c.parquet/2"}])
def test_losers(manifest, tmp_path, k, with_output):
    root, written = manifest
    cfg, _, files, shards, splits = shards_and_splits(root)
    by_name = {f"{Path(s.path).name}/{s.index}": s.id for s in shards}
    ranks = ranks_of(shards, {by_name[n] for n in with_output})
    groups = [splits[0::3], splits[1::3], splits[2::3]]  # map tasks over groups of splits, as find_duplicates
    mapped = [
        _map((cfg.path, {}), cfg, g, {s["id"]: ranks[s["id"]] for sp in g for s in sp["shards"]}, k) for g in groups
    ]
    mapped = [[m] if k == 1 else list(m) for m in mapped]
    reduced = [_reduce(*[m[i] for m in mapped]) for i in range(k)]
    out = OutputDir(str(tmp_path / "out"))
    n = _write((out.url, {}), "_state/dups.parquet", *reduced)
    got = losers_in(out, "_state/dups.parquet")
    expected = expected_losers(occurrences(written, files, shards), ranks)
    assert set(got) == expected and n == len(got) == len(expected)
    assert [(s, r) for _, s, r in got] == sorted((s, r) for _, s, r in got)  # sorted by shard for readers
    ids = {i for i, _, _ in got}
    assert ids == {"x", "y", "z", "q", "w", "v", "u"} and "k" not in ids
    if with_output:  # b.csv's z (shard 0) has output: the earlier z in a.jsonl loses
        assert ("z", by_name["a.jsonl/3"], 6) in got and ("z", by_name["b.csv/0"], 0) not in got
    else:
        assert ("z", by_name["b.csv/0"], 0) in got


def test_no_duplicates(tmp_path):
    w = write_jsonl(tmp_path / "m.jsonl", [rec(f"i{i}") for i in range(5)] + [rec(None), rec(None)])
    cfg, _, _, shards, splits = shards_and_splits(w.path)
    reduced = _reduce(_map((cfg.path, {}), cfg, splits, ranks_of(shards, set()), 1))
    out = OutputDir(str(tmp_path / "out"))
    assert _write((out.url, {}), "d.parquet", reduced) == 0 and losers_in(out, "d.parquet") == []
    assert _reduce(dedup._ID_SCHEMA.empty_table()).num_rows == 0


def test_shards_key(manifest):
    root, _ = manifest
    _, _, _, shards, _ = shards_and_splits(root)
    key = shards_key(shards, "id")
    assert shards_key(list(shards), "id") == key
    assert shards_key(shards, "uid") != key
    assert shards_key(shards[:-1], "id") != key
    from dataclasses import replace

    assert shards_key([*shards[:-1], replace(shards[-1], checksum="other")], "id") != key
    assert shards_key([*shards[:-1], replace(shards[-1], rows=shards[-1].rows - 1)], "id") != key


# -- on Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_find_duplicates_on_ray(ray_cluster, manifest, tmp_path, monkeypatch):
    root, written = manifest
    cfg, _, files, shards, splits = shards_and_splits(root)
    ranks = ranks_of(shards, {shards[5].id})
    total = sum(s.rows for s in shards)
    monkeypatch.setattr(dedup, "_ROWS_PER_PARTITION", 6)  # several partitions of a tiny manifest
    out = OutputDir(str(tmp_path / "out"))
    n = find_duplicates(ray_cluster, cfg, splits, ranks, total, (out.url, {}), "_state/dups.parquet", 0.5)
    expected = expected_losers(occurrences(written, files, shards), ranks)
    assert n == len(expected) and set(losers_in(out, "_state/dups.parquet")) == expected
