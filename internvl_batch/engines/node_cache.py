"""A directory filled once per node and shared by every process on it: the model cache.

The first process that needs `<root>/<key>` fills it while it holds an exclusive lock; the
others (the other replicas on the node, in other pods too when `root` is a node-wide
volume) wait on the lock and reuse the result. A fill writes into `.<key>.partial/` and
keeps what an interrupted fill left there (the fill function decides what is complete),
then writes the marker last and publishes the directory with one rename: `<key>/` exists
only complete.

A wait for the lock is bounded: it gives up after `lock_timeout_s` without progress (the
partial directory not growing), naming the lock, so a replica never hangs behind a
filler that is stuck (an NFS lock never released, a copy that stalled). A filler that
dies releases its lock with its process (flock). Every use touches the marker, so
`prune` can tell versions nobody used lately from the one a running job still loads.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

MARKER = ".complete"
LOCK_TIMEOUT_ENV = "INTERNVL_BATCH_MODEL_CACHE_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 900.0  # without progress: a 55 GB copy at 100 MB/s grows every second
_POLL_S = 0.5

log = logging.getLogger("internvl_batch")


class CacheLockTimeout(TimeoutError):
    """Another process held the fill lock without making progress for longer than allowed."""


def lock_timeout_s() -> float:
    return float(os.environ.get(LOCK_TIMEOUT_ENV) or DEFAULT_LOCK_TIMEOUT_S)


def filled_once(
    root: Path,
    key: str,
    source: str,
    fill: Callable[[Path], dict[str, Any]],
    *,
    lock_timeout: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """`root/key`, filled by `fill(partial_dir)` unless a complete copy is already there.

    `fill` returns what the marker should record (e.g. file count and bytes) next to
    `source` and `extra` (e.g. the mirror manifest's digest).
    """
    target = root / key
    if _use(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{key}.partial"
    timeout = lock_timeout_s() if lock_timeout is None else lock_timeout
    with _exclusive(root / f".{key}.lock", target, partial, timeout):
        if _use(target):  # filled by the process we waited for
            return target
        partial.mkdir(exist_ok=True)
        start = time.monotonic()
        info = fill(partial)
        _fsync_tree(partial)  # the marker must not reach the disk before what it vouches for
        marker = {"source": source, **(extra or {}), **info, "fill_s": round(time.monotonic() - start, 1)}
        (partial / MARKER).write_text(json.dumps(marker, indent=1))
        _fsync_tree(partial)
        if target.exists():  # without a marker: left by something else, never trusted
            shutil.rmtree(target)
        os.rename(partial, target)
        _fsync_dir(root)
        log.info("model cache: %s filled from %s in %.0fs", target, source, marker["fill_s"])
    return target


def _use(target: Path) -> bool:
    """True when `target` is complete; its marker's mtime then records this use (for prune)."""
    marker = target / MARKER
    try:
        os.utime(marker)
    except FileNotFoundError:
        return False
    except PermissionError:  # a read-only cache volume: nothing to prune there either
        return marker.is_file()
    return True


def prune(root: Path, keep: str, same: Callable[[dict[str, Any]], bool], unused_for_s: float) -> list[Path]:
    """Remove the complete copies under `root` other than `keep` whose marker satisfies `same`
    (another version of the same model) and that no process used for `unused_for_s`; a
    copy still being loaded by a running job was used when that job resolved it."""
    removed = []
    now = time.time()
    for marker in root.glob(f"*/{MARKER}"):
        d = marker.parent
        if d.name == keep:
            continue
        try:
            info = json.loads(marker.read_text())
            idle = now - marker.stat().st_mtime
        except (OSError, ValueError):
            continue
        if same(info) and idle >= unused_for_s:
            with _exclusive(root / f".{d.name}.lock", d, root / f".{d.name}.partial", 0.0, wait=False) as got:
                if got:
                    # unpublish first (one rename), then delete: no reader sees half a directory
                    doomed = root / f".{d.name}.pruning"
                    os.rename(d, doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    removed.append(d)
                    log.info(
                        "model cache: removed %s (another version of %s, unused for %.0fs)", d, info.get("source"), idle
                    )
    return removed


@contextmanager
def _exclusive(lock_path: Path, target: Path, partial: Path, timeout: float, wait: bool = True) -> Iterator[bool]:
    with open(lock_path, "a") as lock:
        got = _try(lock)
        if not got and wait:
            log.info("model cache: another process on this node is filling %s; waiting for it", target)
            _wait(lock, lock_path, partial, timeout)
            got = True
        try:
            yield got
        finally:
            if got:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _try(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait(lock, lock_path: Path, partial: Path, timeout: float) -> None:
    """Poll for the lock; the deadline moves on whenever the holder's partial copy grows."""
    size = _tree_size(partial)
    deadline = time.monotonic() + timeout
    while not _try(lock):
        now = time.monotonic()
        grown = _tree_size(partial)
        if grown != size:
            size, deadline = grown, now + timeout
        elif now >= deadline:
            raise CacheLockTimeout(
                f"model cache: waited {timeout:.0f}s for the process holding {lock_path} (it fills "
                f"{partial}, which did not grow meanwhile); if no replica on this node is copying the "
                f"model, that process is stuck: restart it, or raise ${LOCK_TIMEOUT_ENV}"
            )
        time.sleep(_POLL_S)


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
