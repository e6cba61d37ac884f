"""Embedded media are tiled exactly as the same image fetched: the real read and prepare
stages over a URL manifest, an HF parquet, a WebDataset tar and a JSONL data: URI."""

import json

import pyarrow as pa

from internvl_batch.config import InputConfig, PreprocessConfig
from internvl_batch.job.readers import cut_shards, list_files, split_of
from internvl_batch.job.stages.prepare import PrepareStage
from internvl_batch.job.stages.read import ReadStage
from tests.support.datasets import data_uri, image_bytes, sample_members, write_hf_parquet, write_tar


def _tiles(path, out, **input_cfg):
    cfg = InputConfig(path=str(path), **input_cfg)
    fs, [file] = list_files(cfg)
    split = split_of(file, cut_shards(fs, file, 100))
    reader = ReadStage(cfg, ["t"], (str(out), {}), False, None)
    items = pa.concat_tables(list(reader.process(pa.table({"split": [json.dumps(split)]}))))
    prepared = PrepareStage(PreprocessConfig(max_num=4)).process(items)
    return [(r["status"], r["tiles_per_image"], r["tiles"]) for r in prepared.to_pylist()]


def test_tiles_of_embedded_media_equal_the_fetched_image(tmp_path):
    photos = [image_bytes(i, size, fmt) for i, (size, fmt) in enumerate([((640, 480), "JPEG"), ((300, 900), "PNG")])]
    files = []
    for i, p in enumerate(photos):
        files.append(tmp_path / f"p{i}")
        files[-1].write_bytes(p)
    (tmp_path / "urls.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": str(f)}) + "\n"
                                                  for i, f in enumerate(files)))  # fmt: skip
    (tmp_path / "b64.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": data_uri(p)}) + "\n"
                                                 for i, p in enumerate(photos)))  # fmt: skip
    write_hf_parquet(tmp_path / "hf.parquet", [{"id": f"r{i}", "image": {"bytes": p, "path": None}}
                                               for i, p in enumerate(photos)])  # fmt: skip
    write_tar(tmp_path / "s.tar", [m for i, p in enumerate(photos) for m in sample_members(f"r{i}", p)])
    out = tmp_path / "out"
    fetched = _tiles(tmp_path / "urls.jsonl", out)
    assert [(s, n) for s, n, _ in fetched] == [("ok", [1]), ("ok", [4])]  # 1x1; 1x3 + thumbnail
    for name in ("b64.jsonl", "hf.parquet", "s.tar"):
        assert _tiles(tmp_path / name, out) == fetched, name
