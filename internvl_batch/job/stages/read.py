"""Reader actors: a split of the manifest (one file's piece, one or more shards) -> ITEM rows.

The driver only hands out split descriptions; parsing (job/readers/, one reader per input
kind), and the per-row bookkeeping of a shard that an earlier run left partly done,
happen here. Rows are emitted in chunks so that the CPU stage downstream starts before a
split is read to its end, and so that a reader holds little of a dataset whose rows carry
their media.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from internvl_batch.config import InputConfig
from internvl_batch.job.output import OutputDir, done_pairs
from internvl_batch.job.readers import split_rows
from internvl_batch.job.stages.base import Batch, Stage
from internvl_batch.observe import metrics
from internvl_batch.records import item_schema
from internvl_batch.storage import retry

# A chunk is handed on at `chunk_rows` rows or once its embedded media reach this size,
# whichever comes first: rows of a dataset with image bytes are large.
CHUNK_MEDIA_BYTES = 16 * 1024 * 1024


class ReadStage(Stage):
    name = "read"

    def __init__(
        self,
        cfg: InputConfig,
        tasks: list[str],
        output: tuple[str, dict[str, Any]],
        retry_failed: bool,
        duplicates: str | None,
        chunk_rows: int = 1024,
        monitor: str | None = None,
        columns: tuple[str, ...] = (),
    ):
        import fsspec

        self.cfg, self.tasks, self.retry_failed = cfg, tasks, retry_failed
        self.fs, _ = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
        self.out = OutputDir(*output)
        self.duplicates, self.chunk_rows = duplicates, chunk_rows
        self.columns = columns  # those the tasks' prompt templates name
        self.schema = item_schema(cfg.passthrough)
        self.attach_monitor(monitor)

    def process(self, batch: Batch) -> Iterator[Batch]:
        try:
            for spec in batch["split"].to_pylist():
                for table in self._read(json.loads(spec)):
                    self.monitor.progress(self.name, table.num_rows)
                    metrics.stage_rows(self.name, table.num_rows)
                    self.monitor.count(retry.drain())
                    yield table
        except Exception as e:  # retries are spent (storage/retry.py): this split can't be read
            self.monitor.stage_failed(self.name, f"{type(e).__name__}: {e}")
            raise
        self.monitor.count(retry.drain())

    def _done_pairs(self, shard_id: str) -> set[tuple[int, str]]:
        """Pairs an earlier run already answered (only settled ones when retrying failures)."""
        return done_pairs(self.out.shard_keys(shard_id), settled_only=self.retry_failed)

    def _duplicate_rows(self, shard_ids: list[str]) -> set[tuple[str, int]]:
        if not self.duplicates:
            return set()
        table = self.out.read_table(self.duplicates, columns=["shard", "row"], filters=[("shard", "in", shard_ids)])
        return set(zip(table["shard"].to_pylist(), table["row"].to_pylist()))

    def _read(self, split: dict[str, Any]) -> Iterator[pa.Table]:
        shards = split["shards"]
        starts = [s["row_start"] for s in shards]
        done = {s["id"]: self._done_pairs(s["id"]) for s in shards if s.get("resume")}
        dups = self._duplicate_rows([s["id"] for s in shards])
        items: list[dict[str, Any]] = []
        media_bytes = 0
        for n, line_no, row in split_rows(self.fs, split, self.cfg, columns=self.columns):
            shard = shards[bisect.bisect_right(starts, n) - 1]
            if not shard["row_start"] <= n < shard["row_start"] + shard["rows"]:
                continue  # a record of a shard that is done (a split read from the top)
            todo = self.tasks
            if shard["id"] in done:
                todo = [t for t in self.tasks if (n, t) not in done[shard["id"]]]
                if not todo:
                    continue
            if (shard["id"], n) in dups:
                row.mark_duplicate(self.cfg.id_column, f"{split['path']}#{line_no}")
            items.append(row.item(todo, shard["id"], n))
            media_bytes += len(row.video_bytes or b"") + sum(len(b or b"") for b in row.image_bytes or ())
            if len(items) >= self.chunk_rows or media_bytes >= CHUNK_MEDIA_BYTES:
                yield pa.Table.from_pylist(items, schema=self.schema)
                items, media_bytes = [], 0
        if items:
            yield pa.Table.from_pylist(items, schema=self.schema)
