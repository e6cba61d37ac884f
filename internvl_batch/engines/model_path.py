"""Resolve `model.path` to a local directory, fetching a checkpoint at most once per node.

- A local directory (or file:// URL) passes through.
- An object-storage prefix (s3://, gs://, ...: a mirror, see model_mirror.py) is copied
  into the node cache.
- A hub name is downloaded into the node cache when one is configured (`model.download_dir`,
  else $INTERNVL_BATCH_MODEL_CACHE, which the k8s/ manifests point at a node-local
  volume); without one it passes through and vLLM downloads it into $HF_HOME itself.

The node cache is filled under a lock with a marker written last (node_cache.py): every
replica on a node, in every pod that mounts the same volume, loads the same local copy.
Once a checkpoint is local, HF_HUB_OFFLINE=1 is set for what this process starts from
then on (vLLM's engine core): nothing needs the hub any more, so its rate limits and
outages can't fail a replica. `weights=False` fetches everything except the weights
(config, tokenizer, processor files): what checking a model without a GPU needs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from internvl_batch.engines.node_cache import MARKER, filled_once

CACHE_ENV = "INTERNVL_BATCH_MODEL_CACHE"
# Written last by `internvl-batch mirror-model`; when a prefix has one, exactly its files are used.
MIRROR_MANIFEST = "internvl-batch-mirror.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack", "*.onnx")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelPathError(Exception):
    """A problem with model.path that retrying will not fix (an empty prefix, an incomplete mirror, no space)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "internvl-batch" / "models")


def is_weight_file(name: str) -> bool:
    return any(fnmatch.fnmatch(PurePosixPath(name).name, p) for p in WEIGHT_PATTERNS)


def is_hidden(name: str) -> bool:
    """Dot-files and dot-dirs (.git, the hub client's .cache/) are never part of a checkpoint."""
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


def is_hub_name(path: str) -> bool:
    return "://" not in path and not Path(path).expanduser().exists() and bool(_HUB_NAME.fullmatch(path))


def resolve_model_path(
    path: str,
    download_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    weights: bool = True,
) -> str:
    """A local directory holding the checkpoint at `path` (or `path` itself for vLLM to fetch)."""
    scheme = path.split("://", 1)[0] if "://" in path else ""
    if scheme == "file":
        return path.removeprefix("file://")
    if scheme:
        root = Path(download_dir) if download_dir else default_cache_dir()
        fill = _copy_prefix(path, storage_options or {}, weights)
    elif is_hub_name(path) and (download_dir or os.environ.get(CACHE_ENV)):
        root = Path(download_dir or os.environ[CACHE_ENV])
        fill = _download_from_hub(path, weights)
    else:
        return path
    whole = root / cache_key(path, weights=True)
    if not weights and (whole / MARKER).is_file():  # the full checkpoint holds the config files too
        local = whole
    else:
        local = filled_once(root, cache_key(path, weights), path, fill)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return str(local)


def cache_key(path: str, weights: bool = True) -> str:
    """A directory name an operator can read (`InternVL2_5-8B-1a2b...`), unique per source."""
    source = path.rstrip("/")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rsplit("/", 1)[-1])[:60] or "model"
    digest = hashlib.sha256(f"{source}\0{weights}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}" if weights else f"{slug}-{digest}-noweights"


def _prefix_listing(fs, prefix: str, url: str) -> dict[str, int]:
    """The checkpoint's files under `prefix` (relative name -> size); a mirror's manifest is authoritative."""
    found = {}
    for full, info in fs.find(prefix, detail=True).items():
        if not full.startswith(prefix + "/"):  # a sibling such as <prefix>-v2/
            continue
        name = full[len(prefix) + 1 :]
        if info.get("type") != "directory" and not is_hidden(name):
            found[name] = int(info["size"])
    manifest = found.pop(MIRROR_MANIFEST, None)
    if manifest is not None:
        listed = {k: int(v) for k, v in json.loads(fs.cat_file(f"{prefix}/{MIRROR_MANIFEST}"))["files"].items()}
        bad = sorted(n for n, size in listed.items() if found.get(n) != size)
        if bad:
            raise ModelPathError(
                f"model.path={url!r}: the mirror is incomplete or was changed after it was written "
                f"({len(bad)} file(s) missing or of another size, e.g. {bad[0]}); run `internvl-batch mirror-model` again"
            )
        return listed
    if not found:
        raise ModelPathError(f"model.path={url!r}: no files under this prefix")
    return found


def _copy_prefix(url: str, storage_options: dict[str, Any], weights: bool) -> Callable[[Path], dict[str, Any]]:
    def fill(dest: Path) -> dict[str, Any]:
        import fsspec

        fs, prefix = fsspec.core.url_to_fs(url, **storage_options)
        prefix = prefix.rstrip("/")
        files = {n: s for n, s in _prefix_listing(fs, prefix, url).items() if weights or not is_weight_file(n)}
        todo = {n: s for n, s in files.items() if not _complete(dest / n, s)}
        _check_space(dest, sum(todo.values()), url)
        for name, size in sorted(todo.items()):
            local = dest / name
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_name(local.name + ".part")
            fs.get_file(f"{prefix}/{name}", str(part))
            if part.stat().st_size != size:
                raise OSError(f"{url}/{name}: got {part.stat().st_size} bytes, expected {size}")
            os.replace(part, local)  # a file is either absent or whole: an interrupted fill resumes here
        return {"files": len(files), "bytes": sum(files.values()), "weights": weights}

    return fill


def _download_from_hub(repo: str, weights: bool) -> Callable[[Path], dict[str, Any]]:
    def fill(dest: Path) -> dict[str, Any]:
        from huggingface_hub import snapshot_download

        # local_dir keeps the client's resume metadata in dest/.cache, so an interrupted download resumes
        snapshot_download(repo, local_dir=dest, ignore_patterns=None if weights else list(WEIGHT_PATTERNS))
        files = [p for p in dest.rglob("*") if p.is_file() and not is_hidden(str(p.relative_to(dest)))]
        return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "weights": weights}

    return fill


def _complete(local: Path, size: int) -> bool:
    return local.is_file() and local.stat().st_size == size


def _check_space(dest: Path, needed: int, url: str) -> None:
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise ModelPathError(
            f"model.path={url!r} needs {needed / 1e9:.1f} GB more in the model cache {dest.parent}, which has "
            f"{free / 1e9:.1f} GB free: point model.download_dir / ${CACHE_ENV} (k8s/: the model-cache "
            f"hostPath) at a larger disk, e.g. the node's local NVMe"
        )
