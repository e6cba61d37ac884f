"""The GPU job configs in configs/ validate, hold no credentials, and configure what their jobs need."""

from __future__ import annotations

import pytest

from internvl_batch.cli import main as cli_main
from tests.k8s.manifests import REPO, walk

GPU_CONFIGS = ("configs/nightly-caption.yaml", "configs/label-vqa.yaml")


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_validate(name, validate_config):
    path = REPO / name
    assert cli_main(["validate", str(path), "--config-only"]) == 0
    _, cfg = validate_config(path.read_text())
    assert cfg.model.path == "OpenGVLab/InternVL2_5-8B"
    assert cfg.model.dtype == "bfloat16" and cfg.runtime.use_gpu
    assert cfg.runtime.engine_batch_size >= cfg.model.max_num_seqs
    for section in (
        cfg.input.storage_options,
        cfg.output.storage_options,
        cfg.model.storage_options,
        *cfg.preprocess.fetch.storage_options.values(),
    ):
        keys = {k.lower() for k, _ in walk(section)}
        assert not keys & {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key"}, (
            f"{name}: credentials never go in config files"
        )


def test_nightly_config_captions_images_and_videos(validate_config):
    _, cfg = validate_config((REPO / "configs/nightly-caption.yaml").read_text())
    assert {t.preset for t in cfg.task} == {"short_caption", "detailed_caption"}
    assert cfg.input.image_column and cfg.input.video_column


def test_label_vqa_config_has_a_json_schema_task_and_a_row_question_task(validate_config):
    _, cfg = validate_config((REPO / "configs/label-vqa.yaml").read_text())
    schema_tasks = [t for t in cfg.task if t.sampling.json_schema]
    assert schema_tasks and all(t.sampling.json_schema.get("type") == "object" for t in schema_tasks)
    assert any(t.use_row_question for t in cfg.task)
