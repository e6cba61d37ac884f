"""WebDataset tars: samples (members sharing a key) -> rows, each shard of a tar readable
alone from its member offset, broken tars and samples as rows with their reasons."""

from __future__ import annotations

import json

import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import (
    ManifestError,
    cut_shards,
    list_files,
    read_manifest,
    read_splits,
    split_of,
    split_rows,
)
from tests.support.datasets import image_bytes, sample_members, write_tar

JPG = [image_bytes(i, (96, 64), "JPEG") for i in range(8)]
PNG = image_bytes(9, (64, 96))
MP4 = b"\x00\x00\x00\x18ftypmp42 not really a video"


@pytest.fixture
def wds(tmp_path):
    """shards/000000.tar: 4 good samples; 000001.tar: a video, no media, two images, bad json,
    a bad image member; 000002.tar: cut inside its third sample's image."""
    root = tmp_path / "wds"
    good = [m for i in range(4) for m in sample_members(f"{i:06d}", JPG[i], caption=f"cap {i}", question=f"q{i}",
                                                          label=["cat", "dog"][i % 2])]  # fmt: skip
    write_tar(root / "shards" / "000000.tar", good)
    write_tar(root / "shards" / "000001.tar", [
        ("a/v1.mp4", MP4), ("a/v1.json", json.dumps({"start": 1, "end": 2}).encode()),
        ("a/meta.json", b"{}"),  # a sample with no media
        ("a/two.jpg", JPG[4]), ("a/two.png", PNG),  # two images under one key
        ("a/badjson.jpg", JPG[5]), ("a/badjson.json", b"{not json"),
        ("a/bad.jpg", b"not a jpeg at all"),  # the reader's row is fine: prepare's decode_error
        ("README", b"no dot: ignored"),
    ])  # fmt: skip
    third = [m for i in range(3) for m in sample_members(f"t{i}", JPG[i], question="q")]
    full = write_tar(root / "shards" / "000002.tar", third).read_bytes()
    cut = full.index(JPG[2]) + 100  # inside the last sample's image
    (root / "shards" / "000002.tar").write_bytes(full[:cut])
    return root


def test_samples_become_rows(wds):
    rows = read_manifest(InputConfig(path=str(wds), passthrough=("label",)), columns=("text",))
    got = {r.id: r for r in rows}
    assert list(got) == [f"shards/000000.tar#{i:06d}" for i in range(4)] + [
        f"shards/000001.tar#a/{k}" for k in ("v1", "meta", "two", "badjson", "bad")
    ] + [f"shards/000002.tar#t{i}" for i in range(3)]  # fmt: skip
    first = got["shards/000000.tar#000001"]
    assert first.error is None and first.images == ["shards/000000.tar#000001.jpg"] and first.image_bytes == [JPG[1]]
    assert (first.question, first.passthrough, first.values) == ("q1", {"label": "dog"}, {"text": "cap 1"})
    video = got["shards/000001.tar#a/v1"]
    assert (video.video, video.video_bytes, video.start, video.end, video.error) == (
        "shards/000001.tar#a/v1.mp4", MP4, 1.0, 2.0, None)  # fmt: skip
    assert "no 'image' or 'video'" in got["shards/000001.tar#a/meta"].error
    assert "2 image members under key 'a/two' (jpg, png)" in got["shards/000001.tar#a/two"].error
    assert "'a/badjson.json' is not valid JSON" in got["shards/000001.tar#a/badjson"].error
    assert got["shards/000001.tar#a/bad"].error is None  # decoding is prepare's (decode_error)
    t = [got[f"shards/000002.tar#t{i}"] for i in range(3)]
    assert t[0].error is None and t[1].error is None
    assert "truncated or corrupt tar at 't2.jpg'" in t[2].error


@pytest.mark.parametrize("shard_rows", [1, 2, 3])
def test_each_shard_reads_alone_from_its_offset(wds, shard_rows):
    cfg = InputConfig(path=str(wds))
    whole = [(r.id, r.error, r.image_bytes) for r in read_manifest(cfg)]
    fs, files = list_files(cfg)
    alone = []
    for f in files:
        shards = cut_shards(fs, f, shard_rows)
        assert [s.rows for s in shards[:-1]] == [shard_rows] * (len(shards) - 1)
        assert all(s.byte_start is not None for s in shards) and shards[0].byte_start == 0
        for s in reversed(shards):  # any order: each starts at its own member offset
            split = split_of(f, [s])
            alone[:0] = [(r.id, r.error, r.image_bytes) for _, _, r in split_rows(fs, split, cfg)]
        alone_files = alone
    assert sorted(alone_files, key=str) == sorted(whole, key=str) and len(alone) == len(whole)


def test_tar_gz_is_one_split_read_from_the_top(tmp_path):
    members = [m for i in range(5) for m in sample_members(f"{i:03d}", JPG[i])]
    write_tar(tmp_path / "d" / "s.tar.gz", members, gz=True)
    cfg = InputConfig(path=str(tmp_path / "d" / "*.tar.gz"))
    fs, [f] = list_files(cfg)
    assert (f.fmt, f.compression, f.seekable) == ("webdataset", "gzip", False)
    shards = cut_shards(fs, f, 2)
    assert [s.rows for s in shards] == [2, 2, 1] and all(s.byte_start is None for s in shards)
    [split] = read_splits([f], [shards[0], shards[2]])  # one read; the read stage skips shard 1's rows
    assert split["byte_start"] is None
    assert [(n, r.id) for n, _, r in split_rows(fs, split, cfg)] == [(n, f"s.tar.gz#{n:03d}") for n in range(5)]
    alone = split_of(f, [shards[2]])  # the last shard alone: decompressed from the top, skipped to it
    assert [(n, r.image_bytes) for n, _, r in split_rows(fs, alone, cfg)] == [(4, [JPG[4]])]


def test_a_changed_member_changes_its_shards_checksum(tmp_path):
    members = [m for i in range(4) for m in sample_members(f"{i:03d}", JPG[i])]
    path = write_tar(tmp_path / "s.tar", members)
    fs, [f] = list_files(InputConfig(path=str(path)))
    before = cut_shards(fs, f, 2)
    changed = list(members)
    i = next(k for k, (name, _) in enumerate(members) if name == "002.jpg")
    changed[i] = ("002.jpg", JPG[2][:-1] + bytes([JPG[2][-1] ^ 1]))  # same size, one bit
    write_tar(path, changed)
    after = cut_shards(fs, f, 2)
    assert before[0].checksum == after[0].checksum and before[1].checksum != after[1].checksum


def test_id_from_json_and_explicit_id_column(tmp_path):
    members = sample_members("k0", JPG[0], uid="A") + sample_members("k1", JPG[1])
    write_tar(tmp_path / "s.tar", members)
    rows = read_manifest(InputConfig(path=str(tmp_path / "s.tar"), id_column="uid"))
    assert (rows[0].id, rows[0].error) == ("A", None)
    assert (rows[1].id, rows[1].error) == ("s.tar#k1", "missing 'uid'")  # set explicitly: must be there
    default = read_manifest(InputConfig(path=str(tmp_path / "s.tar")))
    assert [r.id for r in default] == ["s.tar#k0", "s.tar#k1"]


def test_extensions_are_configurable(tmp_path):
    write_tar(tmp_path / "s.tar", [("x.jpg", JPG[0]), ("y.image", JPG[1]), ("z.clip", MP4)])
    cfg = InputConfig(path=str(tmp_path / "s.tar"), webdataset={"image_extensions": ["image"],
                                                                 "video_extensions": [".CLIP"]})  # fmt: skip
    rows = {r.id: r for r in read_manifest(cfg)}
    assert "no 'image'" in rows["s.tar#x"].error
    assert rows["s.tar#y"].image_bytes == [JPG[1]] and rows["s.tar#z"].video_bytes == MP4


def test_a_directory_of_tars_beside_their_parquet(wds):
    (wds / "shards" / "000000.parquet").write_bytes(b"img2dataset writes one per tar")
    (wds / "shards" / "000000_stats.json").write_text("{}")
    with pytest.raises(ManifestError, match="input.format=webdataset"):
        list_files(InputConfig(path=str(wds)))
    _, files = list_files(InputConfig(path=str(wds), format="webdataset"))
    assert [f.rel for f in files] == [f"shards/00000{i}.tar" for i in range(3)]


def test_not_a_tar_and_an_empty_file(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"x" * 1000)
    (tmp_path / "empty.tar").write_bytes(b"")
    rows = read_manifest(InputConfig(path=str(tmp_path)))
    assert len(rows) == 1 and rows[0].id == "junk.tar#sample-1" and "corrupt tar" in rows[0].error


def test_tars_on_s3(s3, wds):
    storage = s3.create_bucket("wds-reader")
    for p in sorted(wds.rglob("*.tar")):
        s3.put_object("wds-reader", f"data/{p.relative_to(wds)}", p.read_bytes())
    local = [(r.id, r.error, r.image_bytes, r.video_bytes) for r in read_manifest(InputConfig(path=str(wds)))]
    cfg = InputConfig(path="s3://wds-reader/data", storage_options=storage)  # ids relative to it
    remote = [(r.id, r.error, r.image_bytes, r.video_bytes) for r in read_manifest(cfg)]
    assert remote == local


class _EndsEarlyOnce:
    """A filesystem whose first open of a file ends `short` bytes early, without an error
    (a cut connection some stores report as a clean end of body)."""

    def __init__(self, fs, short: int):
        self.fs, self.short, self.opened = fs, short, 0

    def open(self, path, mode="rb", **kw):
        self.opened += 1
        if self.opened == 1:
            import io

            return io.BufferedReader(io.BytesIO(self.fs.cat_file(path)[: -self.short]))
        return self.fs.open(path, mode, **kw)


def test_a_read_that_ends_early_is_retried_not_taken_for_a_truncated_tar(tmp_path):
    members = [m for i in range(3) for m in sample_members(f"{i}", JPG[i])]
    path = write_tar(tmp_path / "s.tar", members)
    cfg = InputConfig(path=str(path))
    fs, [f] = list_files(cfg)
    [shard] = cut_shards(fs, f, 10)
    clean = [(r.id, r.error, r.image_bytes) for _, _, r in split_rows(fs, split_of(f, [shard]), cfg)]
    tail = len(path.read_bytes()) - path.read_bytes().index(JPG[2]) - 50  # ends inside the last image
    flaky = _EndsEarlyOnce(fs, tail)
    got = [(r.id, r.error, r.image_bytes) for _, _, r in split_rows(flaky, split_of(f, [shard]), cfg)]
    assert flaky.opened == 2 and got == clean and all(e is None for _, e, _ in got)
    planned = cut_shards(_EndsEarlyOnce(fs, tail), f, 10)  # the planner too: a short plan is never cached
    assert [(s.rows, s.checksum) for s in planned] == [(shard.rows, shard.checksum)]


def test_ids_only_reads_the_json_members_alone(wds):
    """The duplicate pass asks for ids: the same ids, no media read."""
    cfg = InputConfig(path=str(wds))
    fs, files = list_files(cfg)
    for f in files:
        split = split_of(f, cut_shards(fs, f, 100))
        full = [r.id for _, _, r in split_rows(fs, split, cfg)]
        ids = [(r.id, r.image_bytes) for _, _, r in split_rows(fs, split, cfg, ids_only=True)]
        assert [i for i, _ in ids] == full and all(b is None for _, b in ids)
    uid = InputConfig(path=str(wds), id_column="label")  # an id from each sample's json
    assert [r.id for r in read_manifest(uid)][:4] == [
        "cat",
        "dog",
        "cat#dup@" + str(files[0].path) + "#3",
        "dog#dup@" + str(files[0].path) + "#4",
    ]
