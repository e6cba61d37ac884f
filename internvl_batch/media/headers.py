"""Image sizes from their first bytes, and the tiles those sizes give: what `plan` predicts
per row without downloading or decoding any image. For videos, the duration their
container declares (MP4/MOV, AVI), which tells how many clips `video.clip_s` cuts.

A header read is a bounded ranged read (`HEADER_BYTES`, more only if the format keeps its
size further in, e.g. a JPEG after a large EXIF or ICC block) through the same fetch
policy as the job (schemes, local roots, SSRF guard, size limit: `Fetcher.check`).
Pillow's lazy open parses only the header. The size is the one tiling sees: after the
EXIF rotation `decode.exif_transpose` applies.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from internvl_batch.media.decode import DecodeConfig
from internvl_batch.media.fetch import Fetcher
from internvl_batch.media.tiling import select_grid
from internvl_batch.status import Status

HEADER_BYTES = 64 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
_ROTATED = range(5, 9)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Header:
    width: int = 0
    height: int = 0
    status: Status = Status.OK  # what the job would give the row, as far as a header tells
    error: str | None = None
    duration_s: float | None = None  # a video's, when its container says


def predict_tiles(width: int, height: int, max_num: int, use_thumbnail: bool = True) -> int:
    """Tiles `media/tiling.tile_image` makes of a width x height image: its grid, plus the
    thumbnail when the grid has more than one tile."""
    cols, rows = select_grid(width, height, 1, max_num)
    n = cols * rows
    return n + (use_thumbnail and n != 1)


def _size(data: bytes, decode: DecodeConfig) -> tuple[int, int]:
    from PIL import ExifTags, Image

    img = Image.open(io.BytesIO(data), formats=list(decode.formats))
    width, height = img.size
    # A PNG's eXIf chunk may follow the pixels; asking for it then would decode them.
    if decode.exif_transpose and (img.format != "PNG" or "exif" in img.info):
        try:
            if img.getexif().get(ExifTags.Base.Orientation) in _ROTATED:
                width, height = height, width
        except Exception:  # decode_image keeps an image with malformed EXIF as stored
            pass
    return width, height


def check_media(url: str, fetcher: Fetcher, max_bytes: int | None = None, field: str = "fetch.max_bytes") -> Header:
    """The fetch policy, existence and the size limit (fetch.max_bytes; a video's
    video.max_bytes), without reading a byte."""
    problem = fetcher.check(url, max_bytes, field)
    if problem is None:
        return Header()
    return Header(status=Status.TOO_LARGE if f"exceeds {field}" in problem else Status.FETCH_ERROR, error=problem)


def read_video_header(url: str, fetcher: Fetcher, max_bytes: int) -> Header:
    """A video's checks (video.max_bytes) and the duration its container declares, from a
    few ranged reads. Frames and their count come from the video's index, which only
    decoding reads; the declared duration is what clips are cut from, near enough."""
    import fsspec
    from fsspec.core import split_protocol

    checked = check_media(url, fetcher, max_bytes, "video.max_bytes")
    if checked.status != Status.OK:
        return checked
    protocol = (split_protocol(url)[0] or "file").lower()
    fs = fsspec.filesystem(protocol, **fetcher.filesystem_options(protocol))
    try:
        with fs.open(
            url if protocol.startswith("http") else fs._strip_protocol(url), "rb", block_size=HEADER_BYTES
        ) as f:
            return Header(duration_s=declared_duration(f))
    except Exception:  # the header is an aid: the job itself will say what is wrong
        return Header()


def declared_duration(f) -> float | None:
    head = f.read(HEADER_BYTES)
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        at = head.find(b"avih") + 8  # dwMicroSecPerFrame, ..., dwTotalFrames (the 5th field)
        if at >= 8 and len(head) >= at + 20:
            usec, frames = struct.unpack_from("<I", head, at)[0], struct.unpack_from("<I", head, at + 16)[0]
            return frames * usec / 1e6 or None
        return None
    pos = 0
    for _ in range(64):  # MP4/MOV top-level boxes: ftyp, mdat, moov, ... (moov may be last)
        f.seek(pos)
        box = f.read(16)
        if len(box) < 8:
            return None
        size, kind = struct.unpack(">I4s", box[:8])
        start = 16 if size == 1 else 8
        size = struct.unpack(">Q", box[8:16])[0] if size == 1 else size
        if kind == b"moov":
            f.seek(pos + start)
            body = f.read(256)
            at = body.find(b"mvhd")
            if at < 4:
                return None
            if body[at + 4] == 1:  # version 1: 64-bit times
                scale, duration = struct.unpack_from(">IQ", body, at + 24)
            else:
                scale, duration = struct.unpack_from(">II", body, at + 16)
            return duration / scale if scale else None
        if size < start:
            return None
        pos += size
    return None


def read_header(url: str, fetcher: Fetcher, decode: DecodeConfig) -> Header:
    import fsspec
    from fsspec.core import split_protocol

    checked = check_media(url, fetcher)
    if checked.status != Status.OK:
        return checked
    protocol = (split_protocol(url)[0] or "file").lower()
    fs = fsspec.filesystem(protocol, **fetcher.filesystem_options(protocol))
    path = url if protocol.startswith("http") else fs._strip_protocol(url)
    n = HEADER_BYTES
    while True:
        try:
            with fs.open(path, "rb", block_size=n) as f:
                data = f.read(n)
        except Exception as e:
            return Header(status=Status.FETCH_ERROR, error=f"{url}: {type(e).__name__}: {e}")
        try:
            width, height = _size(data, decode)
            break
        except Exception as e:
            if len(data) < n or n >= MAX_HEADER_BYTES:  # the whole file, or as far as we look
                why = "not an image in an allowed format" if type(e).__name__ == "UnidentifiedImageError" else e
                return Header(status=Status.DECODE_ERROR, error=f"{url}: no image header in {len(data)} bytes: {why}")
            n *= 8
    if width * height > decode.max_pixels:
        error = f"{url}: {width}x{height} exceeds decode.max_pixels={decode.max_pixels}"
        return Header(width, height, Status.TOO_LARGE, error)
    return Header(width, height)
