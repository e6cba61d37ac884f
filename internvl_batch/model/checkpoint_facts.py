"""What a checkpoint's config.json says about how its images are tiled, read where that
costs nothing: a local directory, or a hub checkpoint already in the local hub cache.

The config takes these as defaults (`preprocess.use_thumbnail`, `model.max_dynamic_patch`),
so a job tiles images as the checkpoint was trained to see them without repeating it.
Nothing here touches the network: a checkpoint on object storage or not yet downloaded
gives the model card's values (every published InternVL 1.5-3.5 checkpoint has them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TilingFacts:
    use_thumbnail: bool = True
    max_dynamic_patch: int = 12
    source: str | None = None  # the config.json read; None: the card's values


CARD = TilingFacts()


def _local_config_json(path: str) -> Path | None:
    if path.startswith("file://"):
        path = path.removeprefix("file://")
    elif "://" in path:
        return None  # object storage: not read at config time
    local = Path(path).expanduser() / "config.json"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError:  # not a valid repo id either
        return None
    return Path(cached) if isinstance(cached, str) else None


def tiling_facts(path: str) -> TilingFacts:
    """The checkpoint's `use_thumbnail` and `max_dynamic_patch`, each the card's where the
    checkpoint can't be read offline or its config.json has no such key (transformers' layout)."""
    config_file = _local_config_json(path)
    if config_file is None:
        return CARD
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return CARD  # not a checkpoint: model.path's own check says so
    if not isinstance(config, dict):
        return CARD
    thumb, patch = config.get("use_thumbnail"), config.get("max_dynamic_patch")
    return TilingFacts(
        thumb if isinstance(thumb, bool) else CARD.use_thumbnail,
        patch if isinstance(patch, int) and not isinstance(patch, bool) and patch >= 1 else CARD.max_dynamic_patch,
        str(config_file),
    )
