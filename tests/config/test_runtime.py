"""The runtime section: Ray Data internals under `runtime.advanced` (old spellings fail naming
the new place, a changed one warns), and engine batches as large as vLLM's batch by default."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from internvl_batch.config import JobConfig, ModelConfig, RuntimeConfig
from internvl_batch.config.loader import ConfigError, load_config


def job_data(tmp_path: Path, model_path: str, **model) -> dict:
    return {
        "input": {"path": str(tmp_path / "m.jsonl")},
        "model": {"path": model_path, **model},
        "task": {"name": "caption", "preset": "short_caption"},
        "output": {"path": str(tmp_path / "out")},
    }


def job_yaml(tmp_path: Path, model_path: str, **model) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_data(tmp_path, model_path, **model)))
    return path


MODEL = "OpenGVLab/InternVL2_5-8B"


@pytest.mark.parametrize("key", ["op_resource_reservation", "reader_cpus", "block_kib"])
def test_an_internal_at_its_old_place_names_its_new_one(tmp_path, key):
    with pytest.raises(ConfigError) as info:
        load_config(job_yaml(tmp_path, MODEL), [f"runtime.{key}=1"])
    assert f"runtime.{key} moved to runtime.advanced.{key}" in str(info.value)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_changed_internal_warns_once_naming_it(tmp_path, caplog):
    cfg = load_config(job_yaml(tmp_path, MODEL), ["runtime.advanced.block_kib=4", "runtime.advanced.reader_cpus=0"])
    assert cfg.runtime.advanced.block_kib == 4
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "runtime.advanced.block_kib=4" in warnings[0], warnings  # reader_cpus=0: the default


def test_the_internals_default_to_what_the_job_needs(tmp_path, caplog):
    advanced = load_config(job_yaml(tmp_path, MODEL)).runtime.advanced
    assert (advanced.op_resource_reservation, advanced.reader_cpus, advanced.block_kib) == (False, 0.0, 1024)
    assert not _warnings(caplog)


@pytest.mark.parametrize(
    ("max_num_seqs", "batch", "expected"),
    [(None, None, 64), (16, None, 16), (128, None, 128), (16, 8, 8), (16, 256, 256)],
)
def test_engine_batch_size_defaults_to_max_num_seqs(tmp_path, max_num_seqs, batch, expected):
    model = {"max_num_seqs": max_num_seqs} if max_num_seqs else {}
    data = job_data(tmp_path, MODEL, **model)
    if batch:
        data["runtime"] = {"engine_batch_size": batch}
    assert JobConfig.model_validate(data).runtime.engine_batch_size == expected


def test_engine_batch_size_is_derived_for_built_sections_too(tmp_path):
    data = job_data(tmp_path, MODEL)
    data["model"] = ModelConfig(path=MODEL, max_num_seqs=24)
    data["runtime"] = RuntimeConfig(replicas=2)
    cfg = JobConfig.model_validate(data)
    assert (cfg.runtime.engine_batch_size, cfg.runtime.replicas) == (24, 2)
    data["runtime"] = RuntimeConfig(engine_batch_size=4)
    assert JobConfig.model_validate(data).runtime.engine_batch_size == 4
