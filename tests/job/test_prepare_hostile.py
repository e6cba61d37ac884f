"""The prepare stage over 1,000 rows, 10 % of them hostile (every kind in tests/support/hostile.py),
on local files and on the real S3 server: every row comes out, with the right status, each
failure naming its item, and the process's peak memory stays bounded."""

import random
import re
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from internvl_batch.config import PreprocessConfig
from internvl_batch.job.stages.prepare import PrepareStage
from internvl_batch.records import item_schema
from internvl_batch.status import Status
from tests.support import hostile

ROWS = 1000
HOSTILE_SHARE = 0.10
BATCH = 25
# Decoding needs at most one image of decode.max_pixels (100 MP, 4 bytes a pixel in Pillow)
# and its RGB copy; everything else here is a few MB a batch.
PEAK_BUDGET_MB = 1200


def _vm_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class PeakRSS:
    """The process's peak resident memory over a block (Linux: VmHWM, reset at the start)."""

    def __enter__(self):
        self.base_mb = _vm_kib("VmRSS") / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pytest.skip("cannot reset the peak-RSS counter here (/proc/self/clear_refs)")
        return self

    def __exit__(self, *exc_info):
        self.peak_mb = _vm_kib("VmHWM") / 1024


def _item(i: int, media: dict, schema: pa.Schema) -> dict:
    row = {f.name: None for f in schema}
    # Fields the lead's data plane adds (shard, row): any non-null value of their type.
    for f in schema:
        if not f.nullable and row[f.name] is None:
            row[f.name] = i if pa.types.is_integer(f.type) else "0"
    fields = {k: v for k, v in media.items() if k != "names"}
    return {**row, **fields, "id": f"row-{i:04d}", "tasks": ["caption"], "status": Status.OK, "error": None}


@pytest.fixture(scope="module")
def manifest(s3, tmp_path_factory):
    """(rows, expectations): ROWS items in a seeded order, each with its expected status."""
    root = tmp_path_factory.mktemp("hostile") / "media"
    stores = {"local": hostile.LocalStore(root), "s3": hostile.S3Store(s3, "hostile-prepare"), "url": None}
    rng = random.Random(13)
    media = []
    # Good rows: a pool of objects reused across rows, as real manifests reuse popular media.
    good_images = [
        hostile._image(stores[where].put(f"ok/{n}.{ext}", data(n)))
        for where in ("local", "s3")
        for n in range(10)
        for ext, data in (("jpg", lambda n: hostile.jpeg(64, 48, n)), ("png", lambda n: hostile.png(48, 64, n)))
    ]
    good_videos = [
        hostile._video(stores[where].put(f"ok/clip{n}.mp4", hostile.video(frames=12 + n)))
        for where in ("local", "s3")
        for n in range(2)
    ]
    hostile_rows = int(ROWS * HOSTILE_SHARE)
    kinds = list(hostile.KINDS.values())
    for n in range(hostile_rows):
        kind = kinds[n % len(kinds)]
        where = kind.stores[(n // len(kinds)) % len(kind.stores)]
        media.append((kind.name, kind.status, kind.make(stores[where], f"bad/{kind.name}-{n}")))
    for n in range(ROWS - hostile_rows):
        if n % 50 == 0:
            media.append(("ok_video", Status.OK, rng.choice(good_videos)))
        elif n % 10 == 0:
            pair = rng.sample(good_images, 2)
            media.append(("ok_images", Status.OK, {**pair[0], "images": pair[0]["images"] + pair[1]["images"]}))
        else:
            media.append(("ok_image", Status.OK, rng.choice(good_images)))
    rng.shuffle(media)
    schema = item_schema()
    rows = [_item(i, m, schema) for i, (_, _, m) in enumerate(media)]
    return rows, media, root


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the bomb rows; refused by max_pixels
def test_every_row_out_with_its_status_and_bounded_memory(manifest, s3):
    rows, media, root = manifest
    fetch = {"local_roots": [str(root)], "max_bytes": hostile.LIMITS["fetch_max_bytes"]}
    cfg = PreprocessConfig.model_validate(
        {
            "fetch": {**fetch, "storage_options": {"s3": s3.storage_options}},
            "video": {"max_frame_pixels": hostile.LIMITS["video_max_frame_pixels"], "num_segments": 4},
            # one tile per image keeps 1,000 rows quick; tiling itself is tested in tests/media
            "max_num": 1,
            "multi_image_max_num": 2,
        }
    )
    stage = PrepareStage(cfg)
    schema = item_schema()
    out = []
    started = time.monotonic()
    with PeakRSS() as memory:
        for at in range(0, len(rows), BATCH):
            table = stage.process(pa.Table.from_pylist(rows[at : at + BATCH], schema=schema))
            # keep what the checks need, drop the tiles as the next stage would
            out += table.drop_columns(["tiles"]).to_pylist()
    elapsed = time.monotonic() - started

    assert [r["id"] for r in out] == [r["id"] for r in rows]  # every row, once, in order
    kinds_seen = Counter()
    for row, (kind, status, fields) in zip(out, media):
        kinds_seen[kind] += 1
        assert row["status"] == status, (kind, fields, row["error"])
        if status == Status.OK:
            assert row["error"] is None
            frames = cfg.video.num_segments if fields["media"] == "video" else len(fields["images"])
            assert len(row["tiles_per_image"]) == frames and all(n >= 1 for n in row["tiles_per_image"])
        else:
            assert fields["names"] in row["error"], (kind, row["error"])
            assert row["tiles_per_image"] == []
            assert hostile.SIGNATURE not in row["error"]
    bad_kinds = {k for k, s, _ in media if k in hostile.KINDS and s != Status.OK}
    assert len(bad_kinds) >= 12
    assert sum(1 for k, _, _ in media if k in hostile.KINDS) == ROWS * HOSTILE_SHARE
    statuses = Counter(r["status"] for r in out)
    stats = stage.fetcher.stats
    print(
        f"\n{len(out)} rows in {elapsed:.1f} s, {len(hostile.KINDS)} hostile kinds, statuses {dict(statuses)}; "
        f"fetcher {stats.as_dict()}; RSS {memory.base_mb:.0f} MB before, peak {memory.peak_mb:.0f} MB"
    )
    assert memory.peak_mb - memory.base_mb < PEAK_BUDGET_MB


def test_local_paths_refused_when_allow_local_is_false(manifest):
    rows, media, _ = manifest
    local = [r for r, (kind, _, f) in zip(rows, media) if kind == "ok_image" and not f["images"][0].startswith("s3://")]
    stage = PrepareStage(PreprocessConfig.model_validate({"fetch": {"allow_local": False}, "max_num": 1}))
    out = stage.process(pa.Table.from_pylist(local[:10], schema=item_schema())).to_pylist()
    assert [r["status"] for r in out] == [Status.FETCH_ERROR] * 10
    assert all(r["images"][0] in r["error"] and "fetch.allow_local=false" in r["error"] for r in out)
