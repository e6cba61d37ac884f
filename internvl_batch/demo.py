"""The embedded default: sample media, a manifest with some bad rows, the tiny model.

`internvl-batch demo` (the README's main command) builds these under .cache/demo on
first use and runs configs/demo.yaml over them. Deterministic, a few MB.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_DIR = Path(".cache/demo")
DEMO_CONFIG = "configs/demo.yaml"


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


def prepare_demo(root: Path = DEMO_DIR) -> Path:
    from internvl_batch.smoke import sample_image
    from internvl_batch.tiny_model import make_tiny_model

    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    if not (root / "model" / "config.json").exists():
        make_tiny_model(root / "model")
    sizes = [(640, 480), (1024, 768), (480, 800), (1600, 400), (300, 300), (800, 600)]
    names = []
    for i, size in enumerate(sizes):
        name = media / f"photo{i}.{'jpg' if i % 2 else 'png'}"
        if not name.exists():
            sample_image(seed=i, size=size).save(name, quality=90) if i % 2 else sample_image(seed=i, size=size).save(name)
        names.append(str(name))
    video = media / "clip.mp4"
    if not video.exists():
        write_sample_video(video)
    (media / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    rows = [{"id": f"img-{i}", "image": n, "source": "demo"} for i, n in enumerate(names)]
    rows += [
        {"id": "pair-0", "image": names[:2], "question": "What differs between the two images?"},
        {"id": "video-0", "video": str(video), "start": 0.5, "end": 3.5},
        {"id": "missing-0", "image": str(media / "does-not-exist.jpg")},
        {"id": "corrupt-0", "image": str(media / "corrupt.jpg")},
        {"image": names[0]},  # no id: an invalid row, still in the output
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return manifest
