"""The records that cross stage boundaries, with explicit Arrow schemas.

Explicit schemas because inference would otherwise guess column types per block (a
block whose `error` is all null becomes a float column and no longer merges with one
that has strings). Tiles travel as raw uint8 bytes: their shape is implied by the tile
counts (T x 448 x 448 x 3, T = sum of tiles_per_image), so no tensor extension type is
needed and the engine side rebuilds the array from them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

TILE_SHAPE = (448, 448, 3)

ITEM_SCHEMA = pa.schema([
    ("id", pa.string()), ("images", pa.list_(pa.string())), ("video", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("question", pa.string()), ("media", pa.string()),
    ("tasks", pa.list_(pa.string())), ("status", pa.string()), ("error", pa.string()),
    ("passthrough_json", pa.string()),
])  # fmt: skip

PREPROCESSED_SCHEMA = pa.schema(
    list(ITEM_SCHEMA) + [
        pa.field("tiles", pa.large_binary()),
        pa.field("tiles_per_image", pa.list_(pa.int32())),
        pa.field("preprocess_ms", pa.float64()),
    ]
)  # fmt: skip

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("response", pa.string()), ("finish_reason", pa.string()), ("num_prompt_tokens", pa.int32()),
    ("num_output_tokens", pa.int32()), ("num_tiles", pa.int32()), ("media", pa.string()),
    ("preprocess_ms", pa.float64()), ("engine_ms", pa.float64()), ("passthrough_json", pa.string()),
])  # fmt: skip


def tiles_to_bytes(tiles: np.ndarray) -> bytes:
    return np.ascontiguousarray(tiles, dtype=np.uint8).tobytes()


def tiles_from_bytes(data: bytes | None, tiles_per_image: list[int]) -> np.ndarray | None:
    n = sum(tiles_per_image)
    if not n:
        return None
    # A writable copy (~1 ms per 13-tile image): torch refuses to wrap read-only buffers.
    return np.frombuffer(data, dtype=np.uint8).reshape(n, *TILE_SHAPE).copy()
