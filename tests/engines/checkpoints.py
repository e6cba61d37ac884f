"""A small checkpoint-shaped directory: config, tokenizer, sharded weights, a nested file and hub-client litter."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_checkpoint(root: Path) -> dict[str, bytes]:
    """Write the files under `root`; return what a mirror or a cache must hold (relative name -> bytes)."""
    files = {
        "config.json": json.dumps({"architectures": ["InternVLChatModel"], "model_type": "internvl_chat"}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 8192}',
        "tokenizer.model": os.urandom(3000),
        "model.safetensors.index.json": b'{"weight_map": {"a": "model-00001-of-00002.safetensors"}}',
        "model-00001-of-00002.safetensors": os.urandom(200_000),
        "model-00002-of-00002.safetensors": os.urandom(150_000),
        "examples/image1.jpg": os.urandom(5000),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    litter = root / ".cache" / "huggingface" / "download" / "config.json.metadata"
    litter.parent.mkdir(parents=True)
    litter.write_text("hub client bookkeeping, never part of a checkpoint")
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` but the cache's own marker (relative name -> bytes)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".complete"
    }
