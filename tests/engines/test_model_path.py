"""resolve_model_path: local paths pass through; object-storage prefixes and (with a cache) hub names are
fetched once per node into the cache, the hub is off from then on, and what will not work fails clearly."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import fsspec
import pytest

from internvl_batch.engines.model_mirror import mirror_model
from internvl_batch.engines.model_path import (
    CACHE_ENV,
    MIRROR_MANIFEST,
    PRUNE_ENV,
    ModelPathError,
    cache_key,
    is_hub_name,
    resolve_model_path,
)
from internvl_batch.engines.node_cache import LOCK_TIMEOUT_ENV, MARKER
from tests.engines.checkpoints import read_tree


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    """Each test starts with the hub on and a cache of its own; whatever the code under test sets is undone."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))


def _upload(local_root, url, **options) -> None:
    """The checkpoint's files only, as a copy still in progress leaves them: no manifest."""
    fs, prefix = fsspec.core.url_to_fs(url, **options)
    fs.put(str(local_root) + "/", prefix, recursive=True)


def _mirror(local_root, url) -> None:
    """A whole mirror, as `internvl-batch mirror-model` writes it (manifest last)."""
    mirror_model(str(local_root), url, progress=lambda _: None)


def _manifest_sha(url, **options) -> str:
    fs, prefix = fsspec.core.url_to_fs(url, **options)
    return hashlib.sha256(fs.cat_file(f"{prefix}/{MIRROR_MANIFEST}")).hexdigest()


def test_local_paths_pass_through_untouched(checkpoint, monkeypatch):
    root, _ = checkpoint
    assert resolve_model_path(str(root)) == str(root)
    assert resolve_model_path(f"file://{root}") == str(root)
    monkeypatch.delenv(CACHE_ENV)
    assert resolve_model_path("OpenGVLab/InternVL2_5-8B") == "OpenGVLab/InternVL2_5-8B", (
        "without a node cache a hub name stays vLLM's to download"
    )
    assert "HF_HUB_OFFLINE" not in os.environ


def test_hub_names_are_told_from_local_directories(checkpoint):
    root, _ = checkpoint
    assert is_hub_name("OpenGVLab/InternVL2_5-78B-AWQ")
    assert not is_hub_name(str(root)) and not is_hub_name("s3://b/OpenGVLab/InternVL2_5-8B")
    assert not is_hub_name("just-a-name") and not is_hub_name("a/b/c")


def test_a_prefix_is_copied_once_into_the_node_cache_and_the_hub_goes_off(checkpoint, memory_prefix, tmp_path):
    root, files = checkpoint
    _mirror(root, memory_prefix)
    local = resolve_model_path(memory_prefix)
    key = cache_key(memory_prefix, content=_manifest_sha(memory_prefix))
    assert local == str(tmp_path / "node-cache" / key), "keyed by the manifest's content"
    assert read_tree(Path(local)) == files, "every file, byte for byte, no .cache litter"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    marker = json.loads((Path(local) / ".complete").read_text())
    assert marker["source"] == memory_prefix and marker["files"] == len(files)
    assert marker["mirror_manifest_sha256"] == _manifest_sha(memory_prefix)

    fs, prefix = fsspec.core.url_to_fs(memory_prefix)
    for name in files:
        fs.rm_file(f"{prefix}/{name}")
    assert resolve_model_path(memory_prefix) == local, "the second replica on the node reads only the manifest"


def test_without_weights_only_config_and_tokenizer_are_fetched(checkpoint, memory_prefix):
    root, files = checkpoint
    _mirror(root, memory_prefix)
    local = resolve_model_path(memory_prefix, weights=False)
    got = read_tree(Path(local))
    assert set(got) == {n for n in files if not n.endswith(".safetensors")}
    whole = resolve_model_path(memory_prefix)
    assert local != whole, "a config-only copy never stands in for the checkpoint"
    assert resolve_model_path(memory_prefix, weights=False) == whole, "but a full copy serves a config-only ask"


def test_download_dir_wins_over_the_environment(checkpoint, memory_prefix, tmp_path):
    root, _ = checkpoint
    _mirror(root, memory_prefix)
    assert resolve_model_path(memory_prefix, str(tmp_path / "elsewhere")).startswith(str(tmp_path / "elsewhere"))


def test_an_empty_prefix_fails_with_a_message_naming_it(memory_prefix):
    fsspec.filesystem("memory").mkdir(memory_prefix.removeprefix("memory://"))
    with pytest.raises(ModelPathError, match=f"no {MIRROR_MANIFEST} under this prefix") as e:
        resolve_model_path(memory_prefix)
    assert memory_prefix in str(e.value)


def test_a_prefix_without_its_manifest_is_refused_even_when_whole(checkpoint, memory_prefix, tmp_path):
    root, _ = checkpoint
    _upload(root, memory_prefix)  # every file there, but nothing says the copy is over
    with pytest.raises(ModelPathError, match="still being written"):
        resolve_model_path(memory_prefix)
    assert not list((tmp_path / "node-cache").glob(f"*/{MARKER}")), "nothing was marked complete"


def test_a_mirror_whose_files_do_not_match_its_manifest_is_refused(checkpoint, memory_prefix):
    root, files = checkpoint
    _upload(root, memory_prefix)
    fs, prefix = fsspec.core.url_to_fs(memory_prefix)
    listed = {n: len(d) for n, d in files.items()}
    fs.pipe_file(f"{prefix}/{MIRROR_MANIFEST}", json.dumps({"source": "x", "files": listed}).encode())
    fs.rm_file(f"{prefix}/model-00002-of-00002.safetensors")  # a mirror still being (re)written
    with pytest.raises(ModelPathError, match="mirror is incomplete"):
        resolve_model_path(memory_prefix)


def test_a_mirror_manifest_limits_the_copy_to_its_files(checkpoint, memory_prefix):
    root, files = checkpoint
    _upload(root, memory_prefix)
    fs, prefix = fsspec.core.url_to_fs(memory_prefix)
    listed = {n: len(d) for n, d in files.items() if n != "examples/image1.jpg"}
    fs.pipe_file(f"{prefix}/{MIRROR_MANIFEST}", json.dumps({"source": "x", "files": listed}).encode())
    local = Path(resolve_model_path(memory_prefix))
    assert set(read_tree(local)) == set(listed)


def test_a_refill_keeps_the_files_an_interrupted_one_completed(checkpoint, memory_prefix, tmp_path):
    root, files = checkpoint
    _mirror(root, memory_prefix)
    partial = tmp_path / "node-cache" / f".{cache_key(memory_prefix, content=_manifest_sha(memory_prefix))}.partial"
    partial.mkdir(parents=True)
    done = "model-00001-of-00002.safetensors"
    # Same size as the real shard, other bytes: only a copy that skips it keeps these.
    (partial / done).write_bytes(b"k" * len(files[done]))
    (partial / "tokenizer.model").write_bytes(b"short")  # a truncated leftover is fetched again
    local = Path(resolve_model_path(memory_prefix))
    assert (local / done).read_bytes() == b"k" * len(files[done])
    assert (local / "tokenizer.model").read_bytes() == files["tokenizer.model"]


def _s3_mirror(s3, bucket: str, root) -> tuple[str, dict]:
    options = s3.create_bucket(bucket)
    url = f"s3://{bucket}/InternVL2_5-8B"
    mirror_model(str(root), url, storage_options=options, progress=lambda _: None)
    return url, options


def test_an_s3_mirror_is_read_once_then_only_its_manifest(checkpoint, s3, tmp_path):
    root, files = checkpoint
    url, options = _s3_mirror(s3, "model-mirrors", root)
    local = resolve_model_path(url, str(tmp_path / "cache"), options)
    assert read_tree(Path(local)) == files
    fs, prefix = fsspec.core.url_to_fs(url, **options)
    fs.rm([f"{prefix}/{n}" for n in files])
    assert resolve_model_path(url, str(tmp_path / "cache"), options) == local, "a filled node reads the manifest only"
    with pytest.raises(ModelPathError, match="incomplete"):
        resolve_model_path(url, str(tmp_path / "other-cache"), options)  # the check above would have copied


def test_a_mirror_still_being_written_to_s3_is_refused(checkpoint, s3, tmp_path):
    root, files = checkpoint
    options = s3.create_bucket("mirror-in-progress")
    url = "s3://mirror-in-progress/InternVL2_5-8B"
    seen: list[str] = []

    def progress(line: str) -> None:  # called after each uploaded file, before the manifest
        with pytest.raises(ModelPathError) as e:
            resolve_model_path(url, str(tmp_path / "cache"), options)
        seen.append(str(e.value))

    mirror_model(str(root), url, storage_options=options, progress=progress)
    assert len(seen) == len(files) and all("still being written" in m for m in seen)
    assert not list((tmp_path / "cache").glob(f"*/{MARKER}")), "no partial checkpoint was published"
    assert read_tree(Path(resolve_model_path(url, str(tmp_path / "cache"), options))) == files

    fs, prefix = fsspec.core.url_to_fs(url, **options)
    fs.rm_file(f"{prefix}/model-00002-of-00002.safetensors")  # a shard lost after the manifest
    with pytest.raises(ModelPathError, match="incomplete"):
        resolve_model_path(url, str(tmp_path / "cache-2"), options)


def test_a_mirror_updated_in_place_reaches_the_node_and_the_old_copy_is_pruned(checkpoint, s3, tmp_path, monkeypatch):
    root, files = checkpoint
    url, options = _s3_mirror(s3, "model-updates", root)
    cache = tmp_path / "cache"
    old = Path(resolve_model_path(url, str(cache), options))
    assert read_tree(old) == files

    # The same path, new weights: the mirror is written again (its manifest last).
    shard = "model-00002-of-00002.safetensors"
    new_bytes = os.urandom(len(files[shard]) + 10)
    (root / shard).write_bytes(new_bytes)
    fs, prefix = fsspec.core.url_to_fs(url, **options)
    fs.rm_file(f"{prefix}/{MIRROR_MANIFEST}")
    mirror_model(str(root), url, storage_options=options, progress=lambda _: None)

    new = Path(resolve_model_path(url, str(cache), options))
    assert new != old and read_tree(new)[shard] == new_bytes, "the node fetched the updated mirror"
    assert old.is_dir(), "a version used moments ago is kept (a replica may still be loading it)"
    monkeypatch.setenv(PRUNE_ENV, "0")
    os.utime(old / MARKER, (time.time() - 10, time.time() - 10))
    assert Path(resolve_model_path(url, str(cache), options)) == new
    assert not old.exists(), "an unused older version of the same path is removed"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [new.name]


def test_a_lock_held_without_progress_times_out_and_progress_keeps_the_wait_going(
    checkpoint, s3, tmp_path, monkeypatch
):
    root, files = checkpoint
    url, options = _s3_mirror(s3, "model-locks", root)
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key(url, content=_manifest_sha(url, **options))
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "1")
    with open(cache / f".{key}.lock", "a") as held:  # a filler on this node that is stuck
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(ModelPathError, match=r"waited 1s .* did not grow"):
            resolve_model_path(url, str(cache), options)
        assert time.monotonic() - start < 10

        partial = cache / f".{key}.partial"
        partial.mkdir()

        def slow_filler() -> None:  # grows its copy for 3 s (3x the timeout), then dies (its scratch gone)
            for i in range(10):
                (partial / f"piece-{i}").write_bytes(b"x" * 100)
                time.sleep(0.3)
            shutil.rmtree(partial)
            fcntl.flock(held, fcntl.LOCK_UN)

        thread = threading.Thread(target=slow_filler)
        thread.start()
        local = resolve_model_path(url, str(cache), options)
        thread.join()
    assert read_tree(Path(local)) == files
    assert time.monotonic() - start >= 3, "the waiter waited for the progressing filler"
