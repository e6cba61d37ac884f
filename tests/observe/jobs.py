"""Small real jobs for the observability tests: local images (real fetch, decode and tile),
a manifest with rows that fail on their own, and a job config around them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from internvl_batch.config import JobConfig
from internvl_batch.devtools.sample_media import sample_image

# (name, size): tile grids 1, 2+1, 3+1 and 6+1 at max_num=6
SIZES = [("square", (300, 300)), ("wide", (900, 450)), ("tall", (448, 1344)), ("big", (1344, 896))]


def write_media(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (name, size) in enumerate(SIZES):
        path = root / f"{name}.png"
        sample_image(seed=i, size=size).save(path)
        paths[name] = str(path)
    # Stored 900x450 with EXIF orientation 6: decoded (and tiled) as 450x900.
    rotated = root / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    sample_image(seed=9, size=(900, 450)).save(rotated, exif=exif, quality=90)
    paths["rotated"] = str(rotated)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
    paths["corrupt"] = str(corrupt)
    paths["missing"] = str(root / "missing.png")
    return paths


def write_manifest(path: Path, media: dict[str, str], repeat: int = 1, extra: tuple = ()) -> list[dict[str, Any]]:
    rows = list(extra)
    for k in range(repeat):
        for name in ("square", "wide", "tall", "big", "rotated", "corrupt", "missing"):
            rows.append({"id": f"{name}-{k}", "image": media[name], "question": "What is it?"})
        rows.append({"id": f"pair-{k}", "image": [media["wide"], media["tall"]], "question": "Compare."})
        rows.append({"id": f"noq-{k}", "image": media["square"]})  # the qa task has no question for it
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return rows


def job_config(manifest: Path, out: Path, model_path: str = "unused-model", **sections: dict[str, Any]) -> JobConfig:
    job = {
        "input": {"path": str(manifest), "shard_rows": 5},
        "model": {"path": model_path, "dtype": "float32", "max_model_len": 8192, "max_num_seqs": 8,
                  "engine_kwargs": {"enforce_eager": True}},
        "preprocess": {"max_num": 6, "multi_image_max_num": 6, "fetch": {"backoff_initial_s": 0.0}},
        "task": [{"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 8}},
                 {"name": "qa", "use_row_question": True, "sampling": {"max_tokens": 8}}],
        "runtime": {"use_gpu": False, "cpu_workers": 1, "cpus_per_worker": 0.5, "engine_cpus": 0.5, "readers": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 4, "progress_interval_s": 1,
                    "stall_timeout_s": 300},
        "output": {"path": str(out), "rows_per_file": 4, "flush_interval_s": 1},
    }  # fmt: skip
    for k, v in sections.items():
        job[k] = {**job[k], **v}
    return JobConfig.model_validate(job)
