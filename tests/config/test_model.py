"""The model section: spellings that are gone fail naming the new way, and what the
checkpoint's config.json says about tiling is read from it, not repeated in the config."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from internvl_batch.config import JobConfig, ModelConfig
from internvl_batch.config.loader import ConfigError, load_config
from tests.config.test_runtime import job_yaml


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ("model.engine=hf", ["model.engine is gone", "jobs run vLLM", "devtools"]),
        ("model.enforce_eager=true", ["model.enforce_eager is gone", "model.engine_kwargs: {enforce_eager: true}"]),
        ("model.cpu_kvcache_gib=2", ["model.cpu_kvcache_gib is gone", "VLLM_CPU_KVCACHE_SPACE"]),
        ("model.seed=0", ["model.seed is gone", "sampling.seed"]),
    ],
)
def test_an_old_model_key_names_the_new_way(tmp_path, item, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(job_yaml(tmp_path, "OpenGVLab/InternVL2_5-8B"), [item])
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_the_hf_engine_is_no_config_choice():
    assert "engine" not in ModelConfig.model_fields
    assert ModelConfig(path="OpenGVLab/InternVL2_5-8B").engine == "vllm"
    assert ModelConfig(path="OpenGVLab/InternVL2_5-8B", engine="vllm").engine == "vllm"  # older configs said so


@pytest.fixture
def checkpoint(tiny_model_dir, tmp_path):
    """The tiny checkpoint with a config.json that tiles unlike the card (no thumbnail, 8 tiles),
    so a value read from it can't be mistaken for a default."""
    d = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "use_thumbnail": False, "max_dynamic_patch": 8}))
    return d


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_tiling_is_read_from_the_checkpoint(checkpoint, tmp_path, caplog):
    cfg = load_config(job_yaml(tmp_path, str(checkpoint)), ["preprocess.max_num=8", "preprocess.multi_image_max_num=8"])
    assert (cfg.model.max_dynamic_patch, cfg.preprocess.use_thumbnail) == (8, False)
    assert cfg.model.workload.layouts[0] == ("image", (8,))  # no thumbnail tile planned either
    assert not _warnings(caplog)


def test_the_tiny_checkpoint_reads_as_the_card(tiny_model_dir, tmp_path, caplog):
    cfg = load_config(job_yaml(tmp_path, str(tiny_model_dir)))
    assert (cfg.model.max_dynamic_patch, cfg.preprocess.use_thumbnail) == (12, True)
    assert not _warnings(caplog)


def test_a_value_that_disagrees_with_the_checkpoint_is_used_with_a_warning(checkpoint, tmp_path, caplog):
    cfg = load_config(
        job_yaml(tmp_path, str(checkpoint)), ["model.max_dynamic_patch=12", "preprocess.use_thumbnail=true"]
    )
    assert (cfg.model.max_dynamic_patch, cfg.preprocess.use_thumbnail) == (12, True)
    patch, thumb = sorted(_warnings(caplog))  # one each
    assert "model.max_dynamic_patch=12" in patch and "checkpoint's max_dynamic_patch=8" in patch
    assert "preprocess.use_thumbnail=True" in thumb and "checkpoint's use_thumbnail=False" in thumb
    assert all(str(checkpoint / "config.json") in w for w in (patch, thumb))


def test_a_value_that_agrees_is_no_warning_and_a_dump_reloads_without_one(checkpoint, tmp_path, caplog):
    cfg = load_config(job_yaml(tmp_path, str(checkpoint)), ["model.max_dynamic_patch=8", "preprocess.max_num=8",
                                                             "preprocess.multi_image_max_num=8"])  # fmt: skip
    assert JobConfig.model_validate(cfg.model_dump()) == cfg
    assert not _warnings(caplog)


@pytest.mark.parametrize("path", ["s3://bucket/InternVL2_5-8B", "OpenGVLab/not-in-the-local-cache"])
def test_a_checkpoint_not_readable_offline_gets_the_cards_values_and_no_warning(tmp_path, caplog, path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    cfg = load_config(job_yaml(tmp_path, path))
    assert (cfg.model.max_dynamic_patch, cfg.preprocess.use_thumbnail) == (12, True)
    assert ModelConfig(path=path, max_dynamic_patch=6).max_dynamic_patch == 6  # nothing to disagree with
    assert not _warnings(caplog)


def test_a_hub_checkpoint_in_the_local_hub_cache_is_read(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--OpenGVLab--InternVL2_5-1B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    shutil.copy(checkpoint / "config.json", snapshot / "config.json")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert ModelConfig(path="OpenGVLab/InternVL2_5-1B").max_dynamic_patch == 8
