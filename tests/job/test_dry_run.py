"""`run --dry-run`: the plan, nothing written, and no Ray cluster for a small manifest."""

import json

import pytest
import ray

from internvl_batch.config import JobConfig
from internvl_batch.job import runner
from internvl_batch.job.readers import ManifestError
from internvl_batch.job.runner import run_job


def _config(manifest, out):
    return JobConfig.model_validate({
        "input": {"path": str(manifest), "shard_rows": 2},
        "model": {"path": "unused-model"},
        "task": [{"name": "caption", "preset": "short_caption"}, {"name": "qa", "use_row_question": True}],
        "runtime": {"use_gpu": False},
        "output": {"path": str(out)},
    })  # fmt: skip


@pytest.fixture
def no_ray():
    assert not ray.is_initialized()  # a test before this one left Ray running
    yield
    assert not ray.is_initialized(), "the dry run started Ray"


def test_dry_run_plans_here_writes_nothing_and_says_what_is_left(tmp_path, no_ray, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "image": "/nowhere.png"}) + "\n{bad\n" + '{"id": "y"}\n')
    summary = run_job(_config(manifest, tmp_path / "out"), dry_run=True)
    assert summary.finished and summary.todo_rows == 6 and summary.plan["shards"]["todo"] == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "6 row x task pairs to do."
    assert "3 rows x 2 task(s)" in lines[0] and "2 to do" in lines[1]
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # nothing written


def test_a_dry_run_over_a_large_manifest_cuts_its_shards_on_ray(tmp_path, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "image": "/a.png"}) + "\n")
    calls = []
    monkeypatch.setattr(runner, "DRY_RUN_LOCAL_BYTES", 10)  # "large": over the local limit
    monkeypatch.setattr(
        runner, "_ray_mapper", lambda cfg, cpus: lambda fn, items: calls.append(items) or map(fn, items)
    )
    assert run_job(_config(manifest, tmp_path / "out"), dry_run=True).todo_rows == 2
    assert len(calls) == 1  # the cluster's mapper, not the driver's threads


def test_nothing_left_is_said_in_a_sentence(tmp_path, capsys):
    assert runner.plan_text({"manifest_files": 1, "manifest_rows": 2, "tasks": ["a"], "rows_x_tasks_to_do": 0,
                             "shards": {"total": 1, "done": 1, "todo": 0, "resume": 0, "redo": 0}}).endswith(
        "Nothing left to do: every row x task pair is in the output.")  # fmt: skip


def test_a_missing_manifest_is_said_before_ray_starts(tmp_path, no_ray):
    with pytest.raises(ManifestError, match="does not exist"):
        run_job(_config(tmp_path / "absent.jsonl", tmp_path / "out"))
