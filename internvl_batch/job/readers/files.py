"""Which files a manifest is: one listing (a file, a directory or a glob, on any fsspec
URL), each file with its format, compression and a fingerprint; no file is read here."""

from __future__ import annotations

from typing import Any

from internvl_batch.job.readers.base import ManifestError, Reader
from internvl_batch.job.shards import ManifestFile
from internvl_batch.storage import retry
from internvl_batch.storage.redact import redact_url

_COMPRESSIONS = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def split_name(path: str) -> tuple[str, str | None]:
    """(name without its compression suffix, fsspec's compression); `.tgz` is `.tar` + gzip."""
    for ext, comp in _COMPRESSIONS.items():
        if path.endswith(ext):
            return path[: -len(ext)] + (".tar" if ext == ".tgz" else ""), comp
    return path, None


def _kind_by_name(path: str, readers: dict[str, Reader]) -> str | None:
    base = split_name(path)[0]
    return next((fmt for fmt, r in readers.items() if any(base.endswith(e) for e in r.extensions)), None)


def _fingerprint(info: dict[str, Any]) -> str:
    """Size plus whatever version the store keeps (ETag, generation, mtime)."""
    version = [str(info[k]) for k in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified") if k in info]
    return f"{info.get('size')}:{':'.join(version)}"


def list_files(cfg: Any, readers: dict[str, Reader]) -> tuple[Any, list[ManifestFile]]:
    """The manifest's files, sorted, with fingerprints: one listing, no reads. In a
    directory, `format: auto` takes every file a reader recognises by name (tar shards
    and other manifests in one directory are refused: img2dataset writes a parquet beside
    each tar), a set format only files of that kind."""
    import fsspec

    if redact_url(cfg.path) != cfg.path:
        # The path is written to the output (plans, ledger entries, ids of rows without one).
        raise ManifestError(
            f"input.path={redact_url(cfg.path)!r} carries credentials (user:password@ or a signed URL): they "
            "would be written to the output; give them in input.storage_options or the environment"
        )
    fs, root = fsspec.core.url_to_fs(cfg.path, **cfg.storage_options)
    wanted = readers if cfg.format == "auto" else {cfg.format: readers[cfg.format]}
    if cfg.format == "openai_batch":
        wanted = {"jsonl": readers["jsonl"]}  # JSONL files, read as batch requests
    if any(c in root for c in "*?["):
        infos = retry.call("manifest_list", cfg.path, lambda: fs.glob(root, detail=True))
        base = root[: min(root.index(c) for c in "*?[" if c in root)].rpartition("/")[0]
    else:
        # One info() instead of isdir()/exists(): those answer False when the request itself
        # fails, which would call a throttled manifest missing (exit 2, "fix it first").
        try:
            info = retry.call("manifest_list", cfg.path, lambda: fs.info(root))
        except Exception as e:
            if retry.is_missing(e):
                raise ManifestError(f"input.path={cfg.path!r} does not exist") from None
            raise
        if info.get("type") == "directory":
            found = retry.call("manifest_list", cfg.path, lambda: fs.find(root, detail=True))
            infos = {p: i for p, i in found.items() if _kind_by_name(p, wanted)}
            base = root.rstrip("/")
        else:
            infos = {root: info}
            base = root.rpartition("/")[0]
    infos = {p: i for p, i in infos.items() if i.get("type") != "directory"}
    if not infos:
        raise ManifestError(f"input.path={cfg.path!r} matches no manifest files")
    files = []
    for path in sorted(infos):
        fmt = cfg.format if cfg.format != "auto" else _kind_by_name(path, readers)
        if fmt is None:
            raise ManifestError(f"input.format=auto cannot tell the format of {path!r}; set input.format")
        compression = split_name(path)[1]
        if fmt == "parquet" and compression:
            raise ManifestError(f"{path!r}: parquet compresses itself; a compressed parquet file is not supported")
        rel = path[len(base) + 1 :] if base and path.startswith(base + "/") else path.rpartition("/")[2]
        files.append(ManifestFile(path, fmt, compression, _fingerprint(infos[path]), rel))
    kinds = {f.fmt for f in files}
    if "webdataset" in kinds and len(kinds) > 1:
        other = next(f.path for f in files if f.fmt != "webdataset")
        raise ManifestError(
            f"input.path={cfg.path!r} holds tar shards and other manifests (e.g. {other!r}); set "
            "input.format=webdataset to read only the tars, or point input.path at the manifests"
        )
    return fs, files
