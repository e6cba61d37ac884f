"""Datasets as users bring them, made in tests: HF-style parquet (the struct layout
`datasets` writes for an Image feature), raw-bytes columns, WebDataset tars (with
`tarfile`, members in the order img2dataset writes them), OpenAI batch request lines."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from internvl_batch.devtools.sample_media import sample_image

# What `datasets` writes for an Image() (and Video()) feature: struct<bytes: binary, path: string>.
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_bytes(seed: int, size: tuple[int, int] = (320, 240), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    sample_image(seed=seed, size=size).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def write_hf_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 1000, **columns: pa.DataType):
    """rows: dicts; `image` values are {bytes, path} dicts (HF_IMAGE) unless a column type says otherwise."""
    schema = pa.schema(
        [("id", pa.string()), ("image", columns.pop("image", HF_IMAGE))] + [(k, t) for k, t in columns.items()]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]], *, gz: bool = False, cut: int | None = None) -> Path:
    """A tar of (member name, bytes), in order; `cut`: keep only the first `cut` bytes (truncated)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:cut] if cut is not None else data)
    return path


def sample_members(key: str, image: bytes | None = None, ext: str = "jpg", **meta: Any) -> list[tuple[str, bytes]]:
    """One WebDataset sample as img2dataset writes it: key.jpg, key.txt (caption), key.json."""
    members = [(f"{key}.{ext}", image)] if image is not None else []
    if "caption" in meta:
        members.append((f"{key}.txt", meta.pop("caption").encode()))
    members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


def batch_line(custom_id: str | None, content: Any, system: str | None = None, **body: Any) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "x", "messages": messages, **body}}
    if custom_id is not None:
        line["custom_id"] = custom_id
    return json.dumps(line)
