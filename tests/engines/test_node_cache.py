"""The node cache: one fill per key however many processes ask at once, never a half-filled directory."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from internvl_batch.engines.node_cache import MARKER, filled_once


def _slow_fill(log: Path):
    def fill(dest: Path) -> dict:
        with open(log, "a") as f:
            f.write("fill\n")
        time.sleep(0.5)  # long enough for every other process to reach the lock
        (dest / "weights.bin").write_bytes(b"w" * 1000)
        return {"files": 1}

    return fill


def _ask(root: str, log: str, out) -> None:
    out.put(str(filled_once(Path(root), "model-abc", "s3://b/model", _slow_fill(Path(log)))))


def test_concurrent_processes_fill_once_and_share_the_result(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ask, args=(str(tmp_path / "cache"), str(tmp_path / "log"), out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = {out.get(timeout=5) for _ in procs}
    assert paths == {str(tmp_path / "cache" / "model-abc")}
    assert (tmp_path / "log").read_text() == "fill\n"
    marker = json.loads((tmp_path / "cache" / "model-abc" / MARKER).read_text())
    assert marker["source"] == "s3://b/model" and marker["files"] == 1
    assert (tmp_path / "cache" / "model-abc" / "weights.bin").stat().st_size == 1000


def test_an_interrupted_fill_publishes_nothing_and_the_next_one_resumes(tmp_path):
    root = tmp_path / "cache"
    seen: list[set[str]] = []

    def fill(dest: Path, fail: bool) -> dict:
        seen.append({p.name for p in dest.iterdir()})
        (dest / "shard-1").write_bytes(b"1")
        if fail:
            raise ConnectionError("the object store went away")
        (dest / "shard-2").write_bytes(b"2")
        return {}

    with pytest.raises(ConnectionError):
        filled_once(root, "m", "src", lambda d: fill(d, fail=True))
    assert not (root / "m").exists(), "a failed fill must not publish the directory"
    target = filled_once(root, "m", "src", lambda d: fill(d, fail=False))
    assert seen == [set(), {"shard-1"}], "the second fill starts from what the first one completed"
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "shard-1", "shard-2"]
    assert not (root / ".m.partial").exists()


def test_a_directory_without_marker_is_never_trusted(tmp_path):
    stale = tmp_path / "m"
    stale.mkdir()
    (stale / "half-written.safetensors").write_bytes(b"x")

    def fill(dest: Path) -> dict:
        (dest / "model.safetensors").write_bytes(b"whole")
        return {}

    target = filled_once(tmp_path, "m", "src", fill)
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "model.safetensors"]
    calls = []
    assert filled_once(tmp_path, "m", "src", lambda d: calls.append(d) or {}) == target
    assert calls == [], "a complete copy is reused without filling again"
