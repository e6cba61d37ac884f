"""CPU stage: fetch, decode and tile each row's media, once for all of its tasks.

A worker keeps up to `preprocess.fetch.concurrency` objects in flight (media/pool.py) and
decodes and tiles whatever has arrived, so object-store and web latency overlap its CPU
work instead of adding to it. It takes a whole block of rows at a time (Ray Data hands
the stage entire blocks, so the fetch window spans all of them, not a few rows) and hands
rows on in small tables as they are ready. Two blocks can be in flight per worker
(pipeline.PREPARE_BLOCKS_IN_FLIGHT): the next block's fetches start while the last rows of
one decode. Decoding and tiling stay one at a time per worker (`cpu`), as before: the CPU it
reserved.

A media failure is data: the row keeps flowing with its status and error, and the
inference stage turns it into output rows without touching the engine. A video with clips
becomes one record per clip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from internvl_batch.config import PreprocessConfig
from internvl_batch.job.stages.base import Batch, Stage
from internvl_batch.job.stages.prepare_block import BlockRun
from internvl_batch.media.fetch import Fetcher
from internvl_batch.media.pool import FetchPool
from internvl_batch.observe import metrics
from internvl_batch.records import prepared_schema

# A table goes on when this many rows are ready, or when nothing else has arrived yet.
ROWS_PER_TABLE = 8
# ...or when its tiles reach this size (a long video's clips, or many large images).
TABLE_BYTES = 32 * 1024**2


class PrepareStage(Stage):
    name = "prepare"

    def __init__(self, cfg: PreprocessConfig, passthrough: tuple[str, ...] = (), monitor: str | None = None):
        self.cfg = cfg
        self.schema = prepared_schema(passthrough)
        self.fetcher = Fetcher(cfg.fetch)
        self.pool = FetchPool(self.fetcher)
        self.cpu = threading.Lock()
        self.attach_monitor(monitor)

    def timer_for_run(self) -> metrics.StepTimer:
        return metrics.StepTimer()

    def __call__(self, batch: Batch) -> Iterator[pa.Table]:
        """Ray Data's entry: tables of rows as they get ready (completion order)."""
        for table, _ in self.stream(batch):
            yield table

    def process(self, batch: Batch) -> pa.Table:
        """All of a batch's rows at once, in its order (clips in clip order): for tests and tools."""
        tables, keys = [], []
        for table, positions in self.stream(batch):
            tables.append(table)
            keys += positions
        if not tables:
            return self.schema.empty_table()
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return pa.concat_tables(tables).take(pa.array(order, pa.int64()))

    def stream(self, batch: Batch) -> Iterator[tuple[pa.Table, list[tuple[int, int]]]]:
        """(table, each row's (position in the batch, clip)) as rows get ready."""
        run = BlockRun(self, batch.to_pylist())
        ready: list[dict[str, Any]] = []
        keys: list[tuple[int, int]] = []
        size = 0
        finished = 0  # manifest rows all of whose records are out
        for pos, row in run.run():
            ready.append(row)
            keys.append((pos, row["clip"] if row["clip"] is not None else -1))
            size += len(row["tiles"] or b"")
            finished += row["clip"] is None or row["clip"] == row["num_clips"] - 1
            if len(ready) >= ROWS_PER_TABLE or size >= TABLE_BYTES or run.arrivals.empty():
                yield self._table(ready, finished, run), keys
                ready, keys, size, finished = [], [], 0, 0
        if ready:
            yield self._table(ready, finished, run), keys
        self._report(run, 0)

    def _table(self, rows: list[dict[str, Any]], finished: int, run: BlockRun) -> pa.Table:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        self.monitor.progress(self.name, finished)
        metrics.stage_rows(self.name, finished)
        tiles = int(pc.sum(pc.list_flatten(table["tiles_per_image"])).as_py() or 0)
        self._report(run, tiles)
        return table

    def _report(self, run: BlockRun, tiles: int) -> None:
        counts = {f"fetch_{k}": n for k, n in self.fetcher.unreported().items()}
        if tiles:
            counts["tiles"] = tiles
        if run.video_bytes_read:
            counts["video_bytes_read"], run.video_bytes_read = run.video_bytes_read, 0
        if counts:
            self.monitor.count(counts)
        run.timer.flush()
        metrics.tiles(tiles)
