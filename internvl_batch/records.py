"""The records that cross stage boundaries, each with its explicit Arrow schema.

    manifest row --(manifest)--> ITEM --(prepare stage)--> PREPARED --(inference stage)--> OUTPUT

Explicit schemas because Ray Data would otherwise guess column types per block (a block
whose `error` is all null becomes a null/float column and no longer merges with one that
has strings), and so that parquet parts written at different times share one schema.
Passthrough columns (manifest columns copied to the output) travel as strings in every
record, named `passthrough.<column>` until the output names them `<column>`. Tiles travel as raw uint8 bytes: their shape is implied by the tile counts
(T x 448 x 448 x 3, T = sum of tiles_per_image), so no tensor extension type is needed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

TILE_SHAPE = (448, 448, 3)

# One manifest row with the tasks left to do for it; status/error set when the row is invalid.
# (shard, row) locate it: its shard and its record number in its manifest file.
ITEM_FIELDS = [
    pa.field("shard", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("images", pa.list_(pa.string())),
    # Embedded media (job/readers/rows.py): null = fetch every image; else one entry per
    # image, non-null = its encoded bytes (images[i] is then only its name).
    pa.field("image_bytes", pa.list_(pa.large_binary())),
    pa.field("video", pa.string()),
    pa.field("video_bytes", pa.large_binary()),  # non-null: the video's bytes (video is its name)
    pa.field("start", pa.float64()),
    pa.field("end", pa.float64()),
    pa.field("clips", pa.list_(pa.list_(pa.float64()))),  # the row's own [start, end] windows (job/clips.py)
    pa.field("question", pa.string()),
    pa.field("media", pa.string()),
    pa.field("tasks", pa.list_(pa.string())),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    # JSON object: the row's values of the columns the tasks' prompt templates name.
    pa.field("prompt_values", pa.string()),
    # JSON object: this row's own system message and sampling (OpenAI batch lines).
    pa.field("request", pa.string()),
]

# A clip of a video row: its index, window and how many the row has; null for other rows.
# The prepare stage makes one record per clip; each becomes output rows keyed (row, clip, task).
CLIP_FIELDS = [
    pa.field("clip", pa.int32()),
    pa.field("clip_start", pa.float64()),
    pa.field("clip_end", pa.float64()),
    pa.field("num_clips", pa.int32()),
]
CLIP_COLUMNS = tuple(f.name for f in CLIP_FIELDS)

# What the prepare stage adds: the row's tiles, all images (or frames) in prompt order.
PREPARED_FIELDS = [
    pa.field("tiles", pa.large_binary()),
    pa.field("tiles_per_image", pa.list_(pa.int32())),
    pa.field("preprocess_ms", pa.float64()),
    *CLIP_FIELDS,
]

# One output row per (manifest row, task): the parquet schema users read.
OUTPUT_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("response", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("num_prompt_tokens", pa.int32()),
    pa.field("num_output_tokens", pa.int32()),
    pa.field("num_tiles", pa.int32()),
    pa.field("media", pa.string()),
    *CLIP_FIELDS,
    pa.field("model", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("preprocess_ms", pa.float64()),
    pa.field("engine_ms", pa.float64()),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    # Every answer (sampling.n of them; response / finish_reason / num_output_tokens: the first).
    pa.field("responses", pa.list_(pa.string())),
    pa.field("finish_reasons", pa.list_(pa.string())),
    pa.field("output_token_counts", pa.list_(pa.int32())),
]
OUTPUT_COLUMNS = frozenset(f.name for f in OUTPUT_FIELDS)


def passthrough_field(name: str) -> str:
    """A passthrough column's name inside the pipeline, apart from the record's own fields."""
    return f"passthrough.{name}"


def _passthrough(names: Iterable[str], *, inside: bool = True) -> list[pa.Field]:
    return [pa.field(passthrough_field(c) if inside else c, pa.string()) for c in names]


def check_passthrough(names: Iterable[str]) -> None:
    clash = OUTPUT_COLUMNS.intersection(names)
    if clash:
        raise ValueError(f"input.passthrough: {sorted(clash)} clash with output columns; rename them")


def item_schema(passthrough: Iterable[str] = ()) -> pa.Schema:
    return pa.schema(ITEM_FIELDS + _passthrough(passthrough))


def prepared_schema(passthrough: Iterable[str] = ()) -> pa.Schema:
    return pa.schema(ITEM_FIELDS + _passthrough(passthrough) + PREPARED_FIELDS)


def output_schema(passthrough: Iterable[str] = ()) -> pa.Schema:
    """Passthrough columns are strings (JSON for non-string values): one schema for every row."""
    check_passthrough(passthrough)
    return pa.schema(OUTPUT_FIELDS + _passthrough(passthrough, inside=False))


def tiles_to_bytes(tiles: np.ndarray) -> bytes:
    return np.ascontiguousarray(tiles, dtype=np.uint8).tobytes()


def tiles_from_bytes(data: bytes | None, tiles_per_image: list[int]) -> np.ndarray | None:
    n = sum(tiles_per_image)
    if not n:
        return None
    # A writable copy (~1 ms per 13-tile image): torch refuses to wrap read-only buffers.
    return np.frombuffer(data, dtype=np.uint8).reshape(n, *TILE_SHAPE).copy()
