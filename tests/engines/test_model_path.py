"""resolve_model_path: local paths pass through; object-storage prefixes and (with a cache) hub names are
fetched once per node into the cache, the hub is off from then on, and what will not work fails clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest

from internvl_batch.engines.model_path import (
    CACHE_ENV,
    MIRROR_MANIFEST,
    ModelPathError,
    cache_key,
    is_hub_name,
    resolve_model_path,
)
from tests.engines.checkpoints import read_tree


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    """Each test starts with the hub on and a cache of its own; whatever the code under test sets is undone."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-cache"))


def _upload(local_root, url) -> None:
    fs, prefix = fsspec.core.url_to_fs(url)
    fs.put(str(local_root) + "/", prefix, recursive=True)


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
    _upload(root, memory_prefix)
    local = resolve_model_path(memory_prefix)
    assert local.startswith(str(tmp_path / "node-cache")) and local.endswith(cache_key(memory_prefix))
    assert read_tree(Path(local)) == files, "every file, byte for byte, no .cache litter"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    marker = json.loads((Path(local) / ".complete").read_text())
    assert marker["source"] == memory_prefix and marker["files"] == len(files)

    fsspec.filesystem("memory").rm(memory_prefix.removeprefix("memory://"), recursive=True)
    assert resolve_model_path(memory_prefix) == local, "the second replica on the node never reads the bucket"


def test_without_weights_only_config_and_tokenizer_are_fetched(checkpoint, memory_prefix):
    root, files = checkpoint
    _upload(root, memory_prefix)
    local = resolve_model_path(memory_prefix, weights=False)
    got = read_tree(Path(local))
    assert set(got) == {n for n in files if not n.endswith(".safetensors")}
    whole = resolve_model_path(memory_prefix)
    assert local != whole, "a config-only copy never stands in for the checkpoint"
    assert resolve_model_path(memory_prefix, weights=False) == whole, "but a full copy serves a config-only ask"


def test_download_dir_wins_over_the_environment(checkpoint, memory_prefix, tmp_path):
    root, _ = checkpoint
    _upload(root, memory_prefix)
    assert resolve_model_path(memory_prefix, str(tmp_path / "elsewhere")).startswith(str(tmp_path / "elsewhere"))


def test_an_empty_prefix_fails_with_a_message_naming_it(memory_prefix):
    fsspec.filesystem("memory").mkdir(memory_prefix.removeprefix("memory://"))
    with pytest.raises(ModelPathError, match="no files under this prefix") as e:
        resolve_model_path(memory_prefix)
    assert memory_prefix in str(e.value)


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
    _upload(root, memory_prefix)
    partial = tmp_path / "node-cache" / f".{cache_key(memory_prefix)}.partial"
    partial.mkdir(parents=True)
    done = "model-00001-of-00002.safetensors"
    # Same size as the real shard, other bytes: only a copy that skips it keeps these.
    (partial / done).write_bytes(b"k" * len(files[done]))
    (partial / "tokenizer.model").write_bytes(b"short")  # a truncated leftover is fetched again
    local = Path(resolve_model_path(memory_prefix))
    assert (local / done).read_bytes() == b"k" * len(files[done])
    assert (local / "tokenizer.model").read_bytes() == files["tokenizer.model"]


def test_an_s3_mirror_is_read_once_then_never_again(checkpoint, s3, tmp_path):
    root, files = checkpoint
    options = s3.create_bucket("model-mirrors")
    url = "s3://model-mirrors/InternVL2_5-8B"
    fs, prefix = fsspec.core.url_to_fs(url, **options)
    fs.put(str(root) + "/", prefix, recursive=True)
    local = resolve_model_path(url, str(tmp_path / "cache"), options)
    assert read_tree(Path(local)) == files
    wrong = {**options, "secret": "not-the-secret"}
    assert resolve_model_path(url, str(tmp_path / "cache"), wrong) == local, "a filled node makes no S3 request"
    with pytest.raises(PermissionError):
        resolve_model_path(url, str(tmp_path / "other-cache"), wrong)  # the check above would have failed
