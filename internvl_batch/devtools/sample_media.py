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
