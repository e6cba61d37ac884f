"""Resolve `model.path` to a local directory, fetching a checkpoint at most once per node.

- A local directory (or file:// URL) passes through.
- An object-storage prefix (s3://, gs://, ...: a mirror, see model_mirror.py) is copied
  into the node cache, keyed by the content of the mirror's manifest (not by the path):
  a mirror rewritten in place gets a new key, so nodes fetch the new files, and versions
  of the same path nobody used for `PRUNE_AFTER_S` are removed then. A prefix without its
  manifest (a mirror still being written: the manifest is written last) or whose files do
  not match it is refused.
- A hub name is downloaded into the node cache when one is configured (`model.download_dir`,
  else $INTERNVL_BATCH_MODEL_CACHE, which k8s/opt-in/ points at a node-local volume);
  without one it passes through and vLLM downloads it into $HF_HOME itself.

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

from internvl_batch.engines.node_cache import MARKER, CacheLockTimeout, filled_once, prune

CACHE_ENV = "INTERNVL_BATCH_MODEL_CACHE"
PRUNE_ENV = "INTERNVL_BATCH_MODEL_CACHE_PRUNE_AFTER_S"
PRUNE_AFTER_S = 6 * 3600.0  # longer than any replica takes to load what it resolved
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
    content, extra = None, {}
    if scheme:
        root = Path(download_dir) if download_dir else default_cache_dir()
        manifest = read_mirror_manifest(path, storage_options or {})
        content = hashlib.sha256(manifest).hexdigest()
        extra = {"mirror_manifest_sha256": content, "weights": weights}
        fill = _copy_prefix(path, storage_options or {}, weights, manifest)
    elif is_hub_name(path) and (download_dir or os.environ.get(CACHE_ENV)):
        root = Path(download_dir or os.environ[CACHE_ENV])
        fill = _download_from_hub(path, weights)
    else:
        return path
    whole = root / cache_key(path, weights=True, content=content)
    if not weights and (whole / MARKER).is_file():  # the full checkpoint holds the config files too
        local = whole
    else:
        key = cache_key(path, weights, content)
        try:
            local = filled_once(root, key, path, fill, extra=extra)
        except CacheLockTimeout as e:
            raise ModelPathError(f"model.path={path!r}: {e}") from e
        if content is not None:
            _prune_other_versions(root, key, path, weights)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return str(local)


def cache_key(path: str, weights: bool = True, content: str | None = None) -> str:
    """A directory name an operator can read (`InternVL2_5-8B-1a2b...`), unique per source and,
    for a mirror, per content of its manifest (its sha256)."""
    source = path.rstrip("/")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rsplit("/", 1)[-1])[:60] or "model"
    digest = hashlib.sha256(f"{source}\0{weights}\0{content or ''}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}" if weights else f"{slug}-{digest}-noweights"


def read_mirror_manifest(url: str, storage_options: dict[str, Any]) -> bytes:
    """The bytes of the mirror's manifest (one small read); refused when it is not there."""
    import fsspec

    fs, prefix = fsspec.core.url_to_fs(url, **storage_options)
    try:
        return fs.cat_file(f"{prefix.rstrip('/')}/{MIRROR_MANIFEST}")
    except FileNotFoundError:
        raise ModelPathError(
            f"model.path={url!r}: no {MIRROR_MANIFEST} under this prefix: the mirror is still being written "
            f"(`internvl-batch mirror-model` writes it last) or was not made by it; run `internvl-batch "
            f"mirror-model` to this prefix and retry"
        ) from None


def _prune_other_versions(root: Path, keep: str, path: str, weights: bool) -> None:
    source = path.rstrip("/")

    def same(info: dict[str, Any]) -> bool:
        return str(info.get("source", "")).rstrip("/") == source and info.get("weights", True) == weights

    prune(root, keep, same, float(os.environ.get(PRUNE_ENV) or PRUNE_AFTER_S))


def _prefix_listing(fs, prefix: str, url: str, manifest: bytes) -> dict[str, int]:
    """The checkpoint's files (relative name -> size): the manifest's, each checked under `prefix`."""
    found = {}
    for full, info in fs.find(prefix, detail=True).items():
        if not full.startswith(prefix + "/"):  # a sibling such as <prefix>-v2/
            continue
        name = full[len(prefix) + 1 :]
        if info.get("type") != "directory" and not is_hidden(name):
            found[name] = int(info["size"])
    try:
        listed = {k: int(v) for k, v in json.loads(manifest)["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelPathError(f"model.path={url!r}: {MIRROR_MANIFEST} is not a mirror manifest ({e!r})") from None
    bad = sorted(n for n, size in listed.items() if found.get(n) != size)
    if bad or not listed:
        raise ModelPathError(
            f"model.path={url!r}: the mirror is incomplete or was changed after it was written "
            f"({len(bad)} file(s) missing or of another size, e.g. {bad[0] if bad else 'no files listed'}); "
            f"run `internvl-batch mirror-model` again"
        )
    return listed


def _copy_prefix(
    url: str, storage_options: dict[str, Any], weights: bool, manifest: bytes
) -> Callable[[Path], dict[str, Any]]:
    def fill(dest: Path) -> dict[str, Any]:
        import fsspec

        fs, prefix = fsspec.core.url_to_fs(url, **storage_options)
        prefix = prefix.rstrip("/")
        files = {
            n: s for n, s in _prefix_listing(fs, prefix, url, manifest).items() if weights or not is_weight_file(n)
        }
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
            f"{free / 1e9:.1f} GB free: point model.download_dir / ${CACHE_ENV} (k8s/: the opt-in model-cache "
            f"volume) at a larger disk, e.g. the node's local NVMe"
        )
