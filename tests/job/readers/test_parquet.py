"""Parquet datasets with their media inside: the Hugging Face `datasets` Image struct (as
pyarrow writes it, and as `datasets` itself does), raw bytes, lists of them; read as rows
with the bytes, streamed a row group at a time."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import cut_shards, read_manifest, split_of, split_rows
from internvl_batch.job.stages import read as read_stage
from internvl_batch.job.stages.read import ReadStage
from internvl_batch.records import item_schema
from tests.support.datasets import HF_IMAGE, image_bytes, write_hf_parquet
from tests.support.manifests import manifest_file


def test_hf_image_struct_bytes_win_else_path(tmp_path):
    a, b = image_bytes(1), image_bytes(2, fmt="JPEG")
    path = write_hf_parquet(tmp_path / "train-00000-of-00001.parquet", [
        {"id": "a", "image": {"bytes": a, "path": "a.png"}},
        {"id": "b", "image": {"bytes": b, "path": None}},
        {"id": "url", "image": {"bytes": None, "path": "s3://bucket/c.jpg"}},
        {"id": "none", "image": None},
    ])  # fmt: skip
    rows = read_manifest(InputConfig(path=str(path)))
    assert [(r.id, r.images, r.image_bytes, r.error) for r in rows[:3]] == [
        ("a", ["a.png"], [a], None), ("b", ["b#image-0"], [b], None), ("url", ["s3://bucket/c.jpg"], None, None)
    ]  # fmt: skip
    assert "no 'image' or 'video'" in rows[3].error


def test_a_parquet_written_by_datasets_itself(tmp_path):
    import datasets
    from PIL import Image

    imgs = [image_bytes(i, (64 + 16 * i, 48)) for i in range(3)]
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "pair": datasets.Sequence(datasets.Image()), "label": datasets.Value("string")})  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"id": ["x0", "x1", "x2"], "image": [{"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(imgs)],
         "pair": [[{"bytes": imgs[0], "path": None}, {"bytes": imgs[2], "path": None}]] * 3,
         "label": ["cat", "dog", None]},
        features=features,
    )  # fmt: skip
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    assert pq.read_schema(tmp_path / "hf.parquet").field("image").type == HF_IMAGE  # the layout the reader expects
    rows = read_manifest(InputConfig(path=str(tmp_path / "hf.parquet")), columns=("label",))
    assert [(r.id, r.images, r.image_bytes, r.values) for r in rows] == [
        (f"x{i}", [f"img{i}.png"], [b], {"label": ["cat", "dog", None][i]}) for i, b in enumerate(imgs)
    ]
    assert Image.open(__import__("io").BytesIO(rows[1].image_bytes[0])).size == (80, 48)
    pairs = read_manifest(InputConfig(path=str(tmp_path / "hf.parquet"), image_column="pair"))
    assert pairs[0].images == ["x0#image-0", "x0#image-1"] and pairs[0].image_bytes == [imgs[0], imgs[2]]


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary(), pa.list_(HF_IMAGE)])
def test_raw_bytes_and_lists(tmp_path, kind):
    data = [image_bytes(i) for i in range(3)]
    values = (
        data if kind != pa.list_(HF_IMAGE) else [[{"bytes": d, "path": None}, {"bytes": d, "path": None}] for d in data]
    )
    path = write_hf_parquet(
        tmp_path / "m.parquet", [{"id": f"r{i}", "image": v} for i, v in enumerate(values)], image=kind
    )
    rows = read_manifest(InputConfig(path=str(path)))
    per_row = 2 if kind == pa.list_(HF_IMAGE) else 1
    assert [r.image_bytes for r in rows] == [[d] * per_row for d in data]


def _big_parquet(path, groups: int, rows_per_group: int, item_bytes: int):
    """Row groups of incompressible image bytes, plus a column of the same size the job never reads."""
    rows = [{"id": f"r{i}", "image": os.urandom(item_bytes), "blob": os.urandom(item_bytes)}
            for i in range(groups * rows_per_group)]  # fmt: skip
    return write_hf_parquet(path, rows, row_group_size=rows_per_group, image=pa.binary(), blob=pa.binary())


def test_a_reader_holds_one_row_group_of_the_columns_it_needs(tmp_path):
    """The bound of parquet.py: one row group's needed columns in Arrow, never the file."""
    group_bytes = 8 * 1024 * 1024
    path = _big_parquet(tmp_path / "big.parquet", groups=4, rows_per_group=8, item_bytes=group_bytes // 8)
    fs, file = manifest_file(path)
    [shard] = cut_shards(fs, file, shard_rows=1000)
    base, peak, seen = pa.total_allocated_bytes(), 0, 0
    for _, _, row in split_rows(fs, split_of(file, [shard]), InputConfig(path=str(path))):
        peak = max(peak, pa.total_allocated_bytes() - base)
        seen += len(row.image_bytes[0])
    assert seen == 4 * group_bytes  # every image went through ...
    assert peak < 1.5 * group_bytes  # ... one row group at a time, without the unread `blob` column


def test_read_stage_hands_on_bounded_chunks_of_bytes(tmp_path, monkeypatch):
    path = _big_parquet(tmp_path / "m.parquet", groups=2, rows_per_group=5, item_bytes=100_000)
    fs, file = manifest_file(path)
    shards = cut_shards(fs, file, shard_rows=4)
    monkeypatch.setattr(read_stage, "CHUNK_MEDIA_BYTES", 250_000)
    out = tmp_path / "out"
    stage = ReadStage(InputConfig(path=str(path)), ["t"], (str(out), {}), False, None, chunk_rows=100)
    import json

    tables = list(stage.process(pa.table({"split": [json.dumps(split_of(file, shards))]})))
    assert [t.num_rows for t in tables] == [3, 3, 3, 1]  # at 250 kB of bytes, not at 100 rows
    assert all(t.schema == item_schema() for t in tables)
    assert tables[0].schema.field("image_bytes").type == pa.list_(pa.large_binary())
    table = pa.concat_tables(tables)
    assert table["id"].to_pylist() == [f"r{i}" for i in range(10)]
    assert all(len(b[0]) == 100_000 for b in table["image_bytes"].to_pylist())
