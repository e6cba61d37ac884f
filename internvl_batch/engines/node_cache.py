"""A directory filled once per node and shared by every process on it: the model cache.

The first process that needs `<root>/<key>` fills it while it holds an exclusive lock; the
others (the other replicas on the node, in other pods too when `root` is a hostPath) wait
on the lock and reuse the result. A fill writes into `.<key>.partial/` and keeps what an
interrupted fill left there (the fill function decides what is complete), then writes the
marker last and publishes the directory with one rename: `<key>/` exists only complete.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = ".complete"

log = logging.getLogger("internvl_batch")


def filled_once(root: Path, key: str, source: str, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """`root/key`, filled by `fill(partial_dir)` unless a complete copy is already there.

    `fill` returns what the marker should record (e.g. file count and bytes) next to `source`.
    """
    target = root / key
    if (target / MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{key}.lock", target):
        if (target / MARKER).is_file():  # filled by the process we waited for
            return target
        partial = root / f".{key}.partial"
        partial.mkdir(exist_ok=True)
        start = time.monotonic()
        info = fill(partial)
        _fsync_tree(partial)  # the marker must not reach the disk before what it vouches for
        marker = {"source": source, **info, "fill_s": round(time.monotonic() - start, 1)}
        (partial / MARKER).write_text(json.dumps(marker, indent=1))
        _fsync_tree(partial)
        if target.exists():  # without a marker: left by something else, never trusted
            shutil.rmtree(target)
        os.rename(partial, target)
        _fsync_dir(root)
        log.info("model cache: %s filled from %s in %.0fs", target, source, marker["fill_s"])
    return target


@contextmanager
def _exclusive(lock_path: Path, target: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("model cache: another process on this node is filling %s; waiting for it", target)
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if that process dies
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
