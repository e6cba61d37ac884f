"""One record -> one ManifestRow, the same for every input kind: ids, media, times,
question, passthrough and prompt-template columns. A record that can't be a valid row
becomes an invalid row with the reason; nothing raises for bad data.

Media columns (`input.image_column`, `input.video_column`) may hold, per row:
  - a URL (any fsspec URL the fetch policy allows), or a list of URLs (several images);
  - encoded bytes (parquet `binary` / `large_binary`);
  - a struct / object with `bytes` and/or `path`: the Hugging Face `datasets` Image and
    Video features (`{bytes: binary, path: string}`). Bytes win; without bytes, `path` is
    fetched like a URL;
  - in JSON (JSONL, OpenAI batch files), where there are no bytes: a `data:` URI
    (`data:image/jpeg;base64,...`), or an object whose `bytes` is a base64 string;
  - for images, a list of any of those.
Embedded media keep a NAME in `images` / `video` (the struct's path, or `<id>#image-<i>` /
`<id>#video`): what messages and errors call them. Their bytes travel in the ITEM's
`image_bytes` / `video_bytes`, and prepare decodes them as it decodes fetched bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from internvl_batch.job.clips import parse_clips
from internvl_batch.job.readers.base import ManifestRow

_BYTES = (bytes, bytearray, memoryview)


def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _number(v: Any, name: str) -> float | None:
    if missing(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} is not a number of seconds") from None


def as_text(v: Any) -> str | None:
    """A column's value as the string passthrough and prompt columns carry (JSON for non-strings)."""
    if missing(v):
        return None
    return v if isinstance(v, str) else json.dumps(v, default=str)


def data_uri_bytes(uri: str) -> bytes:
    """The bytes of a base64 `data:` URI (`data:image/png;base64,...`)."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError(f"a data: URI must be base64 ('data:<type>;base64,...'), got {uri[:40]!r}")
    return _b64(payload, "data: URI")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def _one_medium(v: Any) -> tuple[str | None, bytes | None] | None:
    """(name or URL, bytes) of one medium, or None when `v` is no medium."""
    if isinstance(v, str):
        if not v.strip():
            return None
        if v.startswith("data:"):
            return None, data_uri_bytes(v)
        return v, None
    if isinstance(v, _BYTES):
        return (None, bytes(v)) if len(v) else None
    if isinstance(v, dict) and ("bytes" in v or "path" in v):
        data, path = v.get("bytes"), v.get("path")
        if isinstance(data, str):  # JSON has no bytes: base64
            data = _b64(data, "'bytes'") if data else None
        elif data is not None and not isinstance(data, _BYTES):
            return None
        path = path if isinstance(path, str) and path.strip() else None
        if data is not None and len(data):
            return path, bytes(data)
        return (path, None) if path else None
    return None


def _images(v: Any, rid: str, column: str) -> tuple[list[str], list[bytes | None] | None]:
    items = v if isinstance(v, list) else [v]
    found = [_one_medium(x) for x in items] if items else [None]
    if any(f is None for f in found):
        raise ValueError(
            f"{column!r} must be a URL, image bytes, a {{bytes, path}} struct, or a non-empty list of those"
        )
    names = [name or f"{rid}#image-{i}" for i, (name, _) in enumerate(found)]
    data = [b for _, b in found]
    return names, (data if any(b is not None for b in data) else None)


def _video(v: Any, rid: str, column: str) -> tuple[str, bytes | None]:
    found = None if isinstance(v, list) else _one_medium(v)
    if found is None:
        raise ValueError(f"{column!r} must be a URL, video bytes or a {{bytes, path}} struct (one video per row)")
    return found[0] or f"{rid}#video", found[1]


def parse_row(rec: dict[str, Any], cfg: Any, fallback_id: str, columns: tuple[str, ...] = ()) -> ManifestRow:
    """`cfg`: the InputConfig; `columns`: those the tasks' prompt templates name."""
    raw_id = rec.get(cfg.id_column)
    row = ManifestRow(
        id=str(raw_id) if not missing(raw_id) else fallback_id,
        passthrough={c: as_text(rec.get(c)) for c in cfg.passthrough},
        values={c: as_text(rec.get(c)) for c in columns},
    )
    if missing(raw_id):
        row.error = f"missing {cfg.id_column!r}"
        return row
    image, video = rec.get(cfg.image_column), rec.get(cfg.video_column)
    try:
        if not missing(image):
            row.images, row.image_bytes = _images(image, row.id, cfg.image_column)
        if not missing(video):
            row.video, row.video_bytes = _video(video, row.id, cfg.video_column)
        if row.images and row.video:
            raise ValueError(f"a row has either {cfg.image_column!r} or {cfg.video_column!r}, not both")
        if not row.images and not row.video:
            raise ValueError(f"no {cfg.image_column!r} or {cfg.video_column!r}")
        row.start = _number(rec.get(cfg.start_column), cfg.start_column)
        row.end = _number(rec.get(cfg.end_column), cfg.end_column)
        if row.start is not None and row.end is not None and row.end <= row.start:
            raise ValueError(f"{cfg.end_column}={row.end} is not after {cfg.start_column}={row.start}")
        row.clips = parse_clips(rec.get(cfg.clips_column), row.video, row.start, row.end)
        q = rec.get(cfg.question_column)
        row.question = None if missing(q) else str(q)
    except ValueError as e:
        row.error = str(e)
    return row
