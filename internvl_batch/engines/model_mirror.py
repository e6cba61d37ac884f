"""`internvl-batch mirror-model SOURCE DEST`: copy a checkpoint (hub name or local dir) to object storage.

Jobs then set `model.path` to the mirror and run with HF_HUB_OFFLINE=1: every node copies
the checkpoint from the bucket once (model_path.py), no job needs the hub (no token, no
rate limit, no outage at 00:15) and every night loads the same revision.

The copy goes one file at a time through a staging directory (the largest file must fit
there, not the checkpoint), skips files the destination already holds at the right size
(an interrupted mirror resumes), and writes the manifest (MIRROR_MANIFEST: source,
revision, files and sizes) last: a node uses a mirror only once the manifest is there and
every file matches it. A mirror is never rewritten with another source or revision; put
a new revision under a new prefix.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from internvl_batch.engines.model_path import MIRROR_MANIFEST, is_hidden, is_hub_name


class MirrorError(Exception):
    """The mirror can't be made as asked (unknown source, a destination holding another mirror)."""


@dataclass
class MirrorResult:
    source: str
    revision: str | None
    dest: str
    files: int
    bytes: int
    uploaded: int

    def summary(self) -> str:
        rev = f" @ {self.revision}" if self.revision else ""
        return (
            f"mirrored {self.source}{rev} to {self.dest}: {self.files} files, {self.bytes / 1e9:.2f} GB "
            f"({self.uploaded} uploaded now, {self.files - self.uploaded} already there)\n"
            f"set model.path: {self.dest} (and HF_HUB_OFFLINE=1 in the pods)"
        )


class _Source(Protocol):
    name: str
    revision: str | None

    def files(self) -> dict[str, int]: ...

    def fetch(self, name: str, staging: Path) -> Path: ...

    def release(self, local: Path) -> None: ...


class _LocalDir:
    def __init__(self, root: Path):
        self.root, self.name, self.revision = root, str(root), None

    def files(self) -> dict[str, int]:
        out = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and not is_hidden(rel):
                out[rel] = p.stat().st_size
        return out

    def fetch(self, name: str, staging: Path) -> Path:
        return self.root / name

    def release(self, local: Path) -> None:
        pass


class _Hub:
    def __init__(self, repo: str, revision: str | None):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = HfApi().model_info(repo, revision=revision, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled) as e:
            # gated repos are RepositoryNotFoundError too: HF_TOKEN may be what is missing
            raise MirrorError(f"{repo} @ {revision or 'main'}: {type(e).__name__}: {e}") from e
        self.name, self.revision = repo, info.sha  # a commit: the same bytes whatever the branch does later
        self._files = {s.rfilename: int(s.size) for s in info.siblings if not is_hidden(s.rfilename)}

    def files(self) -> dict[str, int]:
        return dict(self._files)

    def fetch(self, name: str, staging: Path) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.name, name, revision=self.revision, local_dir=staging))

    def release(self, local: Path) -> None:
        local.unlink(missing_ok=True)


def open_source(source: str, revision: str | None = None) -> _Source:
    if Path(source).expanduser().is_dir():
        if revision:
            raise MirrorError(f"--revision applies to hub names; {source} is a local directory")
        return _LocalDir(Path(source).expanduser())
    if is_hub_name(source):
        return _Hub(source, revision)
    raise MirrorError(f"{source!r} is neither a local checkpoint directory nor a hub name (org/model)")


def mirror_model(
    source: str,
    dest: str,
    *,
    revision: str | None = None,
    storage_options: dict[str, Any] | None = None,
    staging_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> MirrorResult:
    import fsspec

    src = open_source(source, revision)
    files = src.files()
    if not files:
        raise MirrorError(f"{source}: no files to mirror")
    fs, prefix = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    prefix = prefix.rstrip("/")
    manifest_path = f"{prefix}/{MIRROR_MANIFEST}"
    if fs.exists(manifest_path):
        held = json.loads(fs.cat_file(manifest_path))
        if (held.get("source"), held.get("revision")) != (src.name, src.revision):
            raise MirrorError(
                f"{dest} already holds a mirror of {held.get('source')} @ {held.get('revision')}; "
                f"mirror {src.name} @ {src.revision} under another prefix (jobs may be reading this one)"
            )
    uploaded = 0
    with tempfile.TemporaryDirectory(dir=staging_dir, prefix="mirror-") as staging:
        for i, (name, size) in enumerate(sorted(files.items()), 1):
            remote = f"{prefix}/{name}"
            if fs.exists(remote) and fs.size(remote) == size:
                continue
            local = src.fetch(name, Path(staging))
            try:
                fs.makedirs(posixpath.dirname(remote), exist_ok=True)
                fs.put_file(str(local), remote)
            finally:
                src.release(local)
            if fs.size(remote) != size:
                raise OSError(f"{dest}/{name}: {fs.size(remote)} bytes after upload, expected {size}")
            uploaded += 1
            progress(f"[{i}/{len(files)}] {name} ({size / 1e6:.1f} MB)")
    record = {
        "source": src.name,
        "revision": src.revision,
        "files": files,
        "mirrored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    fs.pipe_file(manifest_path, json.dumps(record, indent=1).encode())
    return MirrorResult(src.name, src.revision, dest, len(files), sum(files.values()), uploaded)
