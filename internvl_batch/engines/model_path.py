"""Resolve a model reference to something vLLM / transformers can open.

Hub names and local dirs pass through. An object-storage prefix (s3://, gs://, ...) is
copied once per node into a local cache: every replica on the node then loads from local
disk, and a `.complete` marker written last means a half-finished copy (a killed pod) is
never mistaken for a checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

_LOCAL_SCHEMES = ("", "file")


def _scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else ""


def default_cache_dir() -> Path:
    return Path(os.environ.get("INTERNVL_BATCH_MODEL_CACHE", Path.home() / ".cache" / "internvl-batch" / "models"))


def resolve_model_path(
    path: str, download_dir: str | None = None, storage_options: dict[str, Any] | None = None
) -> str:
    scheme = _scheme(path)
    if scheme in _LOCAL_SCHEMES:
        return path.removeprefix("file://")
    import fsspec

    root = Path(download_dir) if download_dir else default_cache_dir()
    target = root / hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:16]
    marker = target / ".complete"
    if marker.exists():
        return str(target)
    target.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copy per node, other replicas wait
        if not marker.exists():
            fs, prefix = fsspec.core.url_to_fs(path, **(storage_options or {}))
            prefix = prefix.rstrip("/")
            files = [f for f in fs.find(prefix) if not f.endswith("/")]
            if not files:
                raise FileNotFoundError(f"model.path={path!r}: no files under this prefix")
            for remote in files:
                local = target / remote[len(prefix) + 1 :]
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(local.name + ".part")
                fs.get_file(remote, str(tmp))
                tmp.rename(local)
            marker.write_text(path)
    return str(target)
