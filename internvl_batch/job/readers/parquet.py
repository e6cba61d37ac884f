"""Parquet manifests, including datasets whose media are in the file (raw bytes, or the
Hugging Face `datasets` Image/Video struct {bytes, path}).

Planning reads only the footer: shards are row ranges, each knows the row groups that
hold it, and its checksum is made of those row groups' footer facts. Reading streams the
split's row groups one at a time (only the columns the job uses) and hands rows on in
batches of `BATCH_ROWS`. Memory bound per reader: the Arrow buffers of one row group's
needed columns plus `BATCH_ROWS` rows as Python values; never the file, never a second
row group (tests/job/readers/test_parquet.py measures it). A row group is read whole
with `read_row_group`, not `iter_batches`: with binary columns pyarrow 26's
`iter_batches` held 3x a row group's bytes (48 MiB for 8 MiB groups, 24 MiB one group at
a time), `read_row_group` 1x. Image datasets often have row groups of 100+ MB: that is
what a reader holds, so keep `runtime.readers` x row group size within a node's memory.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from internvl_batch.job.readers.base import Reader, Record
from internvl_batch.job.readers.rows import parse_row
from internvl_batch.job.shards import Shard, shard_id

BATCH_ROWS = 32


def _row_group_facts(rg) -> tuple:
    cols = []
    for c in range(rg.num_columns):
        col = rg.column(c)
        stats = col.statistics
        minmax = (stats.min, stats.max) if stats is not None and stats.has_min_max else None
        cols.append((col.path_in_schema, col.data_page_offset, col.total_compressed_size, minmax))
    return rg.num_rows, rg.total_byte_size, tuple(cols)


class ParquetReader(Reader):
    fmt = "parquet"
    extensions = (".parquet",)
    to_row = staticmethod(parse_row)

    def cut(self, fs, file, shard_rows, prefix_rows):
        import pyarrow.parquet as pq

        with fs.open(file.path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        starts, row = [], 0
        for i in range(meta.num_row_groups):
            starts.append(row)
            row += meta.row_group(i).num_rows
        total = row
        shards = []
        for k in range((total + shard_rows - 1) // shard_rows):
            lo, hi = k * shard_rows, min((k + 1) * shard_rows, total)
            groups = [i for i, s in enumerate(starts) if s < hi and s + meta.row_group(i).num_rows > lo]
            # Footer facts of the row groups it reads, and its slice of them: a rewritten file
            # has other sizes and offsets even with the same row count.
            facts = [lo, hi] + [_row_group_facts(meta.row_group(i)) for i in groups]
            shards.append(
                Shard(
                    id=shard_id(file, k), path=file.path, index=k, row_start=lo, rows=hi - lo, line_start=lo + 1,
                    checksum=f"{zlib.crc32(repr(facts).encode()):08x}", row_groups=tuple(groups),
                    rg_row_start=starts[groups[0]],
                )
            )  # fmt: skip
        return shards

    def records(self, fs, split, columns) -> Iterator[Record]:
        import pyarrow.parquet as pq

        with fs.open(split["path"], "rb") as f:
            pf = pq.ParquetFile(f)
            present = [c for c in dict.fromkeys(columns) if c in pf.schema_arrow.names]
            n = split["rg_row_start"]
            if not split["row_groups"]:
                return
            for rg in split["row_groups"]:
                table = pf.read_row_group(rg, columns=present, use_threads=False)
                for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                    for rec in batch.to_pylist():
                        yield n, n + 1, rec
                        n += 1
                table = batch = None  # released before the next row group is read

    def shares_split(self, file, prev, shard):
        return bool(set(prev.row_groups) & set(shard.row_groups))
