"""Deterministic sample media for the demo, benchmarks and tests: no downloads needed."""

from __future__ import annotations

from pathlib import Path


def sample_image(seed: int = 0, size: tuple[int, int] = (640, 480)):
    """A deterministic, non-trivial RGB test image (gradient + noise)."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    base = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1)
    noisy = base + rng.normal(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def write_sample_video(path: Path, frames: int = 48, size: tuple[int, int] = (320, 240), fps: float = 12.0) -> Path:
    """A short clip whose content changes frame to frame (a moving gradient)."""
    import cv2
    import numpy as np

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    for i in range(frames):
        shift = 255.0 * i / frames
        rgb = np.stack(np.broadcast_arrays((x + shift) % 256, y, (x + y + 2 * shift) % 256 / 2), axis=-1)
        writer.write(cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_large_video(path: Path, size_bytes: int, frame: tuple[int, int] = (640, 480), fps: int = 25) -> Path:
    """An MJPEG AVI of about `size_bytes`, written in seconds whatever its size: a few noise
    frames are JPEG-encoded once and their bytes repeated in the container (an encoder
    would take minutes per GB). Frame n shows distinct frame n % 16; for long-video tests
    and benchmarks (decoding, ranged reads, memory). AVI 1.0 offsets: below 4 GB."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    w, h = frame
    rng = np.random.default_rng(1)
    jpegs = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue() + b"\0" * (len(buf.getvalue()) % 2))  # chunks are word-aligned
    count = max(1, size_bytes // (sum(len(j) + 8 for j in jpegs) // len(jpegs)))
    if count * max(len(j) for j in jpegs) > 4_000_000_000:
        raise ValueError("an AVI 1.0 file holds under 4 GB")
    sizes = [len(jpegs[n % 16]) for n in range(count)]
    movi = 4 + sum(8 + s for s in sizes)
    le = lambda fmt, *v: struct.pack("<" + fmt, *v)  # noqa: E731

    def chunk(fourcc: bytes, body: bytes) -> bytes:
        return fourcc + le("I", len(body)) + body

    avih = le("14I", 1_000_000 // fps, max(sizes) * fps, 0, 0x10, count, 0, 1, max(sizes), w, h, 0, 0, 0, 0)
    strh = b"vidsMJPG" + le("IHHIIIIIIII4h", 0, 0, 0, 0, 1, fps, 0, count, max(sizes), 0xFFFFFFFF, 0, 0, 0, w, h)
    strf = le("IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    hdrl = b"hdrl" + chunk(b"avih", avih) + chunk(b"LIST", b"strl" + chunk(b"strh", strh) + chunk(b"strf", strf))
    header = chunk(b"LIST", hdrl)
    riff = 4 + len(header) + 8 + movi + 8 + 16 * count
    with open(path, "wb") as f:
        f.write(b"RIFF" + le("I", riff) + b"AVI " + header + b"LIST" + le("I", movi) + b"movi")
        for n in range(count):
            f.write(b"00dc" + le("I", sizes[n]) + jpegs[n % 16])
        f.write(b"idx1" + le("I", 16 * count))
        offset = 4  # from the 'movi' fourcc
        for s in sizes:
            f.write(b"00dc" + le("III", 0x10, offset, s))
            offset += 8 + s
    return path
