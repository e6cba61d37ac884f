"""Hostile media at volume: every kind of bad (or merely unusual) input, each with the status
the prepare stage must give it.

    store = LocalStore(tmp_path / "media") or S3Store(s3, "bucket")
    for kind in KINDS.values():
        row = kind.make(store, "key-prefix")   # ITEM media fields + what the error must name
        kind.status                            # the expected status

Generators return real files' bytes (Pillow, OpenCV, hand-built PNG/JPEG headers); nothing
is mocked. Kinds that the manifest reader decides (a row without media, a broken JSON line,
a duplicate id) are not here: they never reach the prepare stage. An over-long question is
here with status ok: the prepare stage does not read questions (inference gives it
context_overflow).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from internvl_batch.status import Status

SIGNATURE = "hostile5ec2e7signature0123456789abcdef"

# -- bytes -----------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@functools.cache
def jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return _encode(Image.fromarray(_noise(width, height, seed)), "JPEG", quality=85)


@functools.cache
def png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return _encode(Image.fromarray(_noise(width, height, seed)), "PNG")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_file(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@functools.cache
def png_bomb(width: int = 10_001, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels: ~12 KB that decode to 100 MP."""
    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return _png_file(width, height, 1, 0, idat)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` and whose data is 16 zero bytes."""
    return _png_file(width, height, 8, 2, zlib.compress(b"\0" * 16))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG's header with its SOF frame size patched, the scan cut off."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data[: data.index(b"\xff\xda") + 20])


@functools.cache
def rgb48_png(width: int = 40, height: int = 30) -> bytes:
    """16 bits per channel RGB (Pillow reads it, but cannot write it)."""
    pixels = np.random.default_rng(3).integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))
    return _png_file(width, height, 16, 2, zlib.compress(raw))


@functools.cache
def gray16_png(width: int = 40, height: int = 30) -> bytes:
    pixels = np.random.default_rng(4).integers(0, 65536, (height, width)).astype("<u2")
    return _encode(Image.frombytes("I;16", (width, height), pixels.tobytes()), "PNG")


@functools.cache
def cmyk_jpeg() -> bytes:
    return _encode(Image.fromarray(_noise(50, 40, 5)).convert("CMYK"), "JPEG")


@functools.cache
def animated_gif() -> bytes:
    frames = [Image.fromarray(_noise(48, 32, seed)) for seed in range(4)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


@functools.cache
def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(_noise(64, 32, 6)), "JPEG", exif=exif)


def truncated_jpeg() -> bytes:
    data = jpeg(64, 48, 7)
    return data[: len(data) // 2]


TEXT = b"<html><body>404 Not Found</body></html>\n" * 8
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@functools.cache
def video(frames: int = 12, width: int = 64, height: int = 48, fourcc: str = "mp4v") -> bytes:
    """A real video (OpenCV), each frame a different shade."""
    import cv2

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.mp4" if fourcc == "mp4v" else "v.avi")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 12.0, (width, height))
        assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
        for n in range(frames):
            writer.write(np.full((height, width, 3), (n * 20) % 256, np.uint8))
        writer.release()
        return Path(path).read_bytes()


def corrupt_mp4() -> bytes:
    data = video()
    return data[: len(data) // 2]  # OpenCV writes the index (moov) last: none is left


# -- where the bytes live --------------------------------------------------------------------------


class LocalStore:
    """Files under `root` (the run's fetch.local_roots); `outside` is next to it, not in it."""

    name = "local"

    def __init__(self, root: Path):
        self.root = root
        self.outside = root.parent / f"{root.name}-outside"
        root.mkdir(parents=True, exist_ok=True)
        self.outside.mkdir(exist_ok=True)

    def put(self, key: str, data: bytes) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def missing(self, key: str) -> str:
        return str(self.root / key)

    def directory(self, key: str) -> str:
        self.put(f"{key}/inside.jpg", jpeg())
        return str(self.root / key)


class S3Store:
    name = "s3"

    def __init__(self, s3: Any, bucket: str):
        self.s3, self.bucket = s3, bucket
        s3.create_bucket(bucket)

    def put(self, key: str, data: bytes) -> str:
        return self.s3.put_object(self.bucket, key, data)

    def missing(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def directory(self, key: str) -> str:
        self.put(f"{key}/inside.jpg", jpeg())
        return f"s3://{self.bucket}/{key}"


# -- kinds -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of input. `make(store, key)` stores what it needs and returns the row's media
    fields plus `names`: the text its error must contain (None for ok rows)."""

    name: str
    status: Status
    make: Callable[[Any, str], dict[str, Any]]
    stores: tuple[str, ...] = ("local", "s3")


def _image(url: str, names: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"media": "image", "images": [url], "video": None, "names": names, **extra}


def _video(url: str, names: str | None = None) -> dict[str, Any]:
    return {"media": "video", "images": None, "video": url, "names": names}


def _put_image(data: Callable[[], bytes], ext: str, status: Status) -> Callable[[Any, str], dict[str, Any]]:
    def make(store: Any, key: str) -> dict[str, Any]:
        url = store.put(f"{key}.{ext}", data())
        return _image(url, None if status == Status.OK else url)

    return make


def _put_video(data: Callable[[], bytes], status: Status) -> Callable[[Any, str], dict[str, Any]]:
    def make(store: Any, key: str) -> dict[str, Any]:
        url = store.put(f"{key}.mp4", data())
        return _video(url, None if status == Status.OK else url)

    return make


def _missing(store: Any, key: str) -> dict[str, Any]:
    url = store.missing(f"{key}.jpg")
    return _image(url, url)


def _bad_list_member(store: Any, key: str) -> dict[str, Any]:
    good, bad = store.put(f"{key}-good.jpg", jpeg(32, 32, 1)), store.missing(f"{key}-gone.jpg")
    return {**_image(good, bad), "images": [good, bad]}


def _directory(store: Any, key: str) -> dict[str, Any]:
    url = store.directory(key)
    return _image(url, url)


def _outside_roots(store: LocalStore, key: str) -> dict[str, Any]:
    secret = store.outside / f"{key}.jpg"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(jpeg())
    variant = sum(map(ord, key)) % 3
    if variant == 0:
        url = str(secret)
    elif variant == 1:
        url = f"{store.root}/../{store.outside.name}/{key}.jpg"  # traversal
    else:
        link = store.root / f"{key}-link.jpg"  # a symlink inside the root pointing out
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(secret)
        url = str(link)
    return _image(url, url)


def _fixed(url: str, names: str | None = None) -> Callable[[Any, str], dict[str, Any]]:
    return lambda store, key: _image(url, names or url)


def _over_long_question(store: Any, key: str) -> dict[str, Any]:
    return _image(store.put(f"{key}.jpg", jpeg(32, 32, 2)), None, question="Describe every pixel. " * 5000)


_METADATA = f"http://169.254.169.254/latest/meta-data/iam/security-credentials/?X-Amz-Signature={SIGNATURE}"

KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        # the kinds of the first hostile-input round
        Kind("missing_object", Status.FETCH_ERROR, _missing),
        Kind("empty_file", Status.DECODE_ERROR, _put_image(lambda: b"", "jpg", Status.DECODE_ERROR)),
        Kind("truncated_jpeg", Status.DECODE_ERROR, _put_image(truncated_jpeg, "jpg", Status.DECODE_ERROR)),
        Kind("text_named_jpg", Status.DECODE_ERROR, _put_image(lambda: TEXT, "jpg", Status.DECODE_ERROR)),
        Kind("decompression_bomb", Status.TOO_LARGE, _put_image(png_bomb, "png", Status.TOO_LARGE)),
        Kind("over_long_question", Status.OK, _over_long_question),
        Kind("bad_list_member", Status.FETCH_ERROR, _bad_list_member),
        Kind("corrupt_mp4", Status.DECODE_ERROR, _put_video(corrupt_mp4, Status.DECODE_ERROR)),
        # this round
        Kind("huge_header_png", Status.TOO_LARGE, _put_image(lambda: png_claiming(60_000, 60_000), "png", Status.TOO_LARGE)),
        Kind("huge_header_jpeg", Status.TOO_LARGE, _put_image(lambda: jpeg_claiming(65_000, 65_000), "jpg", Status.TOO_LARGE)),
        # under every pixel limit, so the decoder allocates it before finding no data
        Kind("big_header_no_data", Status.DECODE_ERROR, _put_image(lambda: png_claiming(8_000, 6_000), "png", Status.DECODE_ERROR)),
        # a bomb just under the limits is an image like any other: the worst a row may cost
        Kind("bomb_under_limit", Status.OK, _put_image(lambda: png_bomb(8_000, 6_000), "png", Status.OK)),
        Kind("cmyk_jpeg", Status.OK, _put_image(cmyk_jpeg, "jpg", Status.OK)),
        Kind("gray16_png", Status.OK, _put_image(gray16_png, "png", Status.OK)),
        Kind("rgb48_png", Status.OK, _put_image(rgb48_png, "png", Status.OK)),
        Kind("animated_gif", Status.OK, _put_image(animated_gif, "gif", Status.OK)),
        Kind("exif_rotated", Status.OK, _put_image(exif_rotated_jpeg, "jpg", Status.OK)),
        Kind("one_frame_video", Status.OK, _put_video(lambda: video(frames=1), Status.OK)),
        Kind("zero_byte_video", Status.DECODE_ERROR, _put_video(lambda: b"", Status.DECODE_ERROR)),
        Kind("huge_frame_video", Status.TOO_LARGE, _put_video(lambda: video(frames=2, width=320, height=240), Status.TOO_LARGE)),
        Kind("image_as_video", Status.DECODE_ERROR, _put_video(png, Status.DECODE_ERROR)),
        Kind("video_as_image", Status.DECODE_ERROR, _put_image(video, "jpg", Status.DECODE_ERROR)),
        Kind("eps_named_png", Status.DECODE_ERROR, _put_image(lambda: EPS, "png", Status.DECODE_ERROR)),
        Kind("oversize_object", Status.TOO_LARGE, _put_image(lambda: b"\xff\xd8" + b"\0" * (3 * 1024**2), "jpg", Status.TOO_LARGE)),
        Kind("directory_url", Status.FETCH_ERROR, _directory),
        Kind("unsupported_scheme", Status.FETCH_ERROR, _fixed("ftp://media.example/a.jpg"), stores=("url",)),
        Kind("outside_roots", Status.FETCH_ERROR, _outside_roots, stores=("local",)),
        Kind("cloud_metadata_url", Status.FETCH_ERROR, _fixed(_METADATA, _METADATA.split("?")[0]), stores=("url",)),
    ]
}  # fmt: skip

# What the prepare stage's config must say for the statuses above to hold.
LIMITS = {"fetch_max_bytes": 2 * 1024**2, "video_max_frame_pixels": 200 * 200}
