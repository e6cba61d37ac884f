"""mirror-model: a checkpoint copied to object storage once, resumable, manifest last, never overwritten
by another model; and what it writes is what resolve_model_path copies to a node."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from internvl_batch.cli import main as cli_main
from internvl_batch.engines.model_mirror import MirrorError, mirror_model
from internvl_batch.engines.model_path import MIRROR_MANIFEST, resolve_model_path
from tests.engines.checkpoints import read_tree, write_checkpoint


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def dest(memory_prefix):
    return memory_prefix


def _remote(url: str) -> dict[str, bytes]:
    fs, prefix = fsspec.core.url_to_fs(url)
    return {p[len(prefix) + 1 :]: fs.cat_file(p) for p in fs.find(prefix)}


def test_mirror_copies_the_checkpoint_and_writes_its_manifest_last(checkpoint, dest):
    root, files = checkpoint
    seen_manifest_early = []

    def progress(line: str) -> None:
        fs, prefix = fsspec.core.url_to_fs(dest)
        seen_manifest_early.append(fs.exists(f"{prefix}/{MIRROR_MANIFEST}"))

    result = mirror_model(str(root), dest, progress=progress)
    remote = _remote(dest)
    manifest = json.loads(remote.pop(MIRROR_MANIFEST))
    assert remote == files, "every checkpoint file, no hub-client .cache litter"
    assert manifest["files"] == {n: len(d) for n, d in files.items()} and manifest["source"] == str(root)
    assert seen_manifest_early == [False] * len(files), "nodes must not trust a mirror before it is complete"
    assert (result.files, result.uploaded, result.bytes) == (len(files), len(files), sum(map(len, files.values())))


def test_an_interrupted_mirror_resumes_with_the_missing_files_only(checkpoint, dest):
    root, files = checkpoint
    mirror_model(str(root), dest, progress=lambda _: None)
    fs, prefix = fsspec.core.url_to_fs(dest)
    fs.rm_file(f"{prefix}/{MIRROR_MANIFEST}")
    fs.rm_file(f"{prefix}/model-00002-of-00002.safetensors")
    again = mirror_model(str(root), dest, progress=lambda _: None)
    assert again.uploaded == 1
    assert {n: d for n, d in _remote(dest).items() if n != MIRROR_MANIFEST} == files


def test_a_prefix_holding_another_model_is_never_overwritten(checkpoint, dest, tmp_path):
    root, _ = checkpoint
    mirror_model(str(root), dest, progress=lambda _: None)
    other = tmp_path / "other"
    other.mkdir()
    write_checkpoint(other)
    with pytest.raises(MirrorError, match="already holds a mirror"):
        mirror_model(str(other), dest, progress=lambda _: None)


def test_unknown_sources_are_refused_before_anything_is_written(dest):
    for source in ("no/such/dir/here", "not-a-hub-name"):
        with pytest.raises(MirrorError, match="neither a local checkpoint directory nor a hub name"):
            mirror_model(source, dest)
    assert not fsspec.filesystem("memory").exists(dest.removeprefix("memory://"))


def test_the_cli_mirrors_to_s3_and_a_node_copies_exactly_that(checkpoint, s3, tmp_path, monkeypatch, capsys):
    root, files = checkpoint
    options = s3.create_bucket("mirror-cli")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3.region)
    url = "s3://mirror-cli/models/InternVL2_5-8B"
    assert cli_main(["mirror-model", str(root), url]) == 0
    assert f"model.path: {url}" in capsys.readouterr().out
    local = resolve_model_path(url, str(tmp_path / "node"))
    assert read_tree(Path(local)) == files
    assert cli_main(["mirror-model", str(tmp_path), url]) == 2, "another model onto the same prefix"


def test_a_hub_source_that_cannot_be_reached_is_a_clear_error(dest, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here either way
    with pytest.raises(MirrorError, match="OpenGVLab/InternVL2_5-8B @ main: OfflineModeIsEnabled"):
        mirror_model("OpenGVLab/InternVL2_5-8B", dest)
