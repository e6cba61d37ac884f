"""Duplicate ids across the whole manifest, found by a distributed pass before the run.

A repeated id is an `invalid_row` output row (under an id of its own) except for its first
occurrence, so that (id, task) stays a unique key. "First" must not depend on the order
workers happen to run in, or a rerun would decide differently from the run it resumes:
the winner is the occurrence in a shard that already has output, else the earliest in
manifest order. The pass is a small map-reduce in Ray tasks: map tasks read the ids of
groups of splits and hash-partition them; one reduce task per partition groups ids and
keeps only the losers; a last task writes them (sorted by shard) to one parquet file in
`_state/`, which readers filter by shard. The driver holds object refs and counts only.

Cost: one more read of the manifest's id column (parquet: that column only; JSONL/CSV: a
parse of every line; tars: a read of every sample), done once per plan: the result is cached under a name that carries
a hash of the plan, so a resumed run reuses it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from internvl_batch.config import InputConfig
from internvl_batch.job.readers import split_rows
from internvl_batch.storage import retry

_ID_SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.string()), ("row", pa.int64()), ("rank", pa.int64())])
_ROWS_PER_PARTITION = 2_000_000


def shards_key(shards: list[Any], id_column: str) -> str:
    h = hashlib.sha1(id_column.encode())
    for s in shards:
        h.update(f"{s.id}:{s.checksum}:{s.rows};".encode())
    return h.hexdigest()[:16]


def _ids_of(fs: Any, cfg: InputConfig, split: dict[str, Any], ranks: dict[str, int]) -> pa.Table:
    ids, shard_ids, rows, rank = [], [], [], []
    starts = [(s["row_start"], s["row_start"] + s["rows"], s["id"]) for s in split["shards"]]
    for n, _, row in split_rows(fs, split, cfg, op="manifest_dedup", ids_only=True):
        if row.error is not None and row.id.startswith(split["path"] + "#"):
            continue  # an id made from the file and line: unique by construction
        for lo, hi, sid in starts:
            if lo <= n < hi:
                ids.append(row.id)
                shard_ids.append(sid)
                rows.append(n)
                rank.append(ranks[sid] + (n - lo))
                break
    return pa.table([ids, shard_ids, rows, rank], schema=_ID_SCHEMA)


def _partition(table: pa.Table, k: int) -> list[pa.Table]:
    import pandas as pd

    if k == 1:
        return [table]
    part = pd.util.hash_array(table["id"].to_numpy(zero_copy_only=False)) % np.uint64(k)
    return [table.filter(pa.array(part == i)) for i in range(k)]


def _map(fs_spec: tuple[str, dict], cfg: InputConfig, splits: list[dict], ranks: dict[str, int], k: int):
    import fsspec

    fs, _ = fsspec.core.url_to_fs(fs_spec[0], **fs_spec[1])
    table = pa.concat_tables([_ids_of(fs, cfg, s, ranks) for s in splits]) if splits else _ID_SCHEMA.empty_table()
    parts = _partition(table, k)
    return parts[0] if k == 1 else tuple(parts)


def _reduce(*parts: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    table = pa.concat_tables(parts)
    if table.num_rows == 0:
        return table
    groups = table.group_by("id").aggregate([("rank", "min"), ("rank", "count")])
    repeated = groups.filter(pc.greater(groups["rank_count"], 1))
    if repeated.num_rows == 0:
        return _ID_SCHEMA.empty_table()
    joined = table.join(repeated.select(["id", "rank_min"]), "id", join_type="inner")
    return joined.filter(pc.not_equal(joined["rank"], joined["rank_min"])).select(_ID_SCHEMA.names)


def _write(out_spec: tuple[str, dict], name: str, *parts: pa.Table) -> int:
    from internvl_batch.job.output import OutputDir

    table = pa.concat_tables([p.cast(_ID_SCHEMA) for p in parts]).sort_by(
        [("shard", "ascending"), ("row", "ascending")]
    )
    out = OutputDir(*out_spec)
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=64 * 1024)
    out.write_atomic(name, buf.getvalue())
    return table.num_rows


def _map_counted(*args: Any) -> tuple:
    """`_map`'s partitions, then the storage retries its reads took (for the run summary)."""
    parts = _map(*args)
    return (*(parts if isinstance(parts, tuple) else (parts,)), retry.drain())


def _write_counted(*args: Any) -> tuple[int, dict[str, int]]:
    n = _write(*args)
    return n, retry.drain()


def find_duplicates(
    ray: Any,
    cfg: InputConfig,
    splits: list[dict],
    ranks: dict[str, int],
    total_rows: int,
    out_spec: tuple[str, dict],
    name: str,
    num_cpus: float,
) -> int:
    """Write the losers of every repeated id to `name` under the output; return how many."""
    k = int(min(256, max(1, total_rows // _ROWS_PER_PARTITION)))
    groups = max(1, min(len(splits), 64))
    fs_spec = (cfg.path, cfg.storage_options)
    map_task = ray.remote(_map_counted).options(num_returns=k + 1, num_cpus=num_cpus)
    mapped, counted = [], []
    for g in range(groups):
        mine = splits[g::groups]
        mine_ranks = {s["id"]: ranks[s["id"]] for split in mine for s in split["shards"]}
        *refs, counts = map_task.remote(fs_spec, cfg, mine, mine_ranks, k)
        mapped.append(refs)
        counted.append(counts)
    reduce_task = ray.remote(_reduce).options(num_cpus=num_cpus)
    reduced = [reduce_task.remote(*[m[i] for m in mapped]) for i in range(k)]
    write_task = ray.remote(_write_counted).options(num_cpus=num_cpus)
    n, counts = ray.get(write_task.remote(out_spec, name, *reduced))
    for c in [counts, *ray.get(counted)]:
        retry.record(c)
    return int(n)
