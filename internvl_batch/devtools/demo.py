"""The embedded default: sample media, a manifest with some bad rows, the tiny model.

`internvl-batch demo` (the README's main command) builds these under .cache/demo on
first use and runs configs/demo.yaml over them. Deterministic, a few MB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEMO_DIR = Path(".cache/demo")
DEMO_CONFIG = "configs/demo.yaml"


def prepare_demo(root: Path = DEMO_DIR) -> Path:
    from internvl_batch.devtools.sample_media import sample_image, write_sample_video
    from internvl_batch.devtools.tiny_model import make_tiny_model

    # The demo runs the CPU build of vLLM, which sizes its KV cache from this (GiB), as
    # `make demo` sets it; set before Ray starts, so the engine actor inherits it.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    if not (root / "model" / "config.json").exists():
        make_tiny_model(root / "model")
    sizes = [(640, 480), (1024, 768), (480, 800), (1600, 400), (300, 300), (800, 600)]
    names = []
    for i, size in enumerate(sizes):
        name = media / f"photo{i}.{'jpg' if i % 2 else 'png'}"
        if not name.exists():
            sample_image(seed=i, size=size).save(name, quality=90) if i % 2 else sample_image(seed=i, size=size).save(
                name
            )
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
    text = "".join(json.dumps(r) + "\n" for r in rows) + "{not json\n"
    if not manifest.exists() or manifest.read_text() != text:  # unchanged: a rerun finds its shards done
        manifest.write_text(text)
    return manifest
