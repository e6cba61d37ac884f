"""CPU stage: fetch, decode and tile each row's media, once for all of its tasks.

A media failure is data: the row keeps flowing with its status and error, and the
inference stage turns it into output rows without touching the engine.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from internvl_batch.config import PreprocessConfig
from internvl_batch.job.stages.base import Batch, Stage
from internvl_batch.media.decode import decode_image
from internvl_batch.media.errors import MediaError, TooLarge
from internvl_batch.media.fetch import Fetcher
from internvl_batch.media.tiling import split_tile_budget, tile_image
from internvl_batch.media.video import sample_frames
from internvl_batch.observe import metrics
from internvl_batch.records import prepared_schema, tiles_to_bytes
from internvl_batch.status import Status


class PrepareStage(Stage):
    name = "prepare"

    def __init__(self, cfg: PreprocessConfig, passthrough: tuple[str, ...] = (), monitor: str | None = None):
        self.cfg = cfg
        self.schema = prepared_schema(passthrough)
        self.fetcher = Fetcher(cfg.fetch)
        self.attach_monitor(monitor)
        self.timer = metrics.StepTimer()

    def _bytes(self, url: str, embedded: bytes | None, limit: int) -> bytes:
        if embedded is None:
            return self.fetcher.fetch(url)
        if len(embedded) > limit:
            raise TooLarge(f"{url}: {len(embedded)} bytes exceed the limit of {limit}")
        return embedded

    def _image_tiles(self, urls: list[str], embedded: list | None = None) -> tuple[np.ndarray, list[int]]:
        budgets = [self.cfg.max_num] if len(urls) == 1 else split_tile_budget(len(urls), self.cfg.multi_image_max_num)
        tiles = []
        for i, (url, max_num) in enumerate(zip(urls, budgets)):
            with self.timer("fetch"):
                data = self._bytes(url, embedded[i] if embedded else None, self.cfg.fetch.max_bytes)
            with self.timer("decode"):
                img = decode_image(data, self.cfg.decode, source=url)
            with self.timer("tile"):
                tiles.append(tile_image(img, max_num=max_num, use_thumbnail=self.cfg.use_thumbnail))
        return np.concatenate(tiles), [len(t) for t in tiles]

    def _video_tiles(
        self, url: str, start: Any, end: Any, embedded: bytes | None = None
    ) -> tuple[np.ndarray, list[int]]:
        bound = None
        if start is not None or end is not None:
            # the card's own defaults for an open end
            bound = (-100000 if start is None else float(start), 100000 if end is None else float(end))
        with self.timer("fetch"):
            data = self._bytes(url, embedded, self.cfg.fetch.max_bytes)
        with self.timer("decode"):
            frames, _ = sample_frames(data, bound, self.cfg.video.num_segments, limits=self.cfg.video, name=url)
        with self.timer("tile"):
            # each frame: one 448px tile, as the card's load_video(max_num=1)
            tiles = [tile_image(f, max_num=1, use_thumbnail=self.cfg.use_thumbnail) for f in frames]
        return np.concatenate(tiles), [len(t) for t in tiles]

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        out: dict[str, Any] = {"tiles": None, "tiles_per_image": []}
        if row["status"] == Status.OK:
            try:
                if row["media"] == "video":
                    tiles, counts = self._video_tiles(row["video"], row["start"], row["end"], row.get("video_bytes"))
                else:
                    tiles, counts = self._image_tiles(row["images"], row.get("image_bytes"))
                out.update(tiles=tiles_to_bytes(tiles), tiles_per_image=counts)
            except MediaError as e:
                out.update(status=e.status, error=str(e))
        out["preprocess_ms"] = (time.perf_counter() - start) * 1000
        return out

    def process(self, batch: Batch) -> Batch:
        before = self.fetcher.stats.as_dict()
        table = pa.Table.from_pylist([{**r, **self._one(r)} for r in batch.to_pylist()], schema=self.schema)
        self.monitor.progress(self.name, table.num_rows)
        after = self.fetcher.stats.as_dict()
        tiles = int(pc.sum(pc.list_flatten(table["tiles_per_image"])).as_py() or 0)
        counts = {f"fetch_{k}": after[k] - before[k] for k in after if after[k] != before[k]}
        self.monitor.count({**counts, "tiles": tiles} if tiles else counts)
        self.timer.flush()
        metrics.stage_rows(self.name, table.num_rows)
        metrics.tiles(tiles)
        return table
