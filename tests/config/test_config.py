"""Job config: YAML + `--set` overrides, strict validation whose errors name the field, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from internvl_batch.cli import main
from internvl_batch.config import JobConfig, TaskConfig
from internvl_batch.config.job import CAPTION_PRESETS
from internvl_batch.config.loader import ConfigError, apply_overrides, load_config

LABELS_SCHEMA = {
    "type": "object",
    "properties": {
        "scene": {"type": "string", "enum": ["indoor", "outdoor", "unknown"]},
        "people": {"type": "boolean"},
    },
    "required": ["scene", "people"],
    "additionalProperties": False,
}


@pytest.fixture
def demo_data(tmp_path) -> dict:
    """The shape of configs/demo.yaml, with paths under tmp_path."""
    return {
        "input": {"path": str(tmp_path / "manifest.jsonl"), "passthrough": ["source"]},
        "model": {
            "path": str(tmp_path / "model"),
            "dtype": "float32",
            "max_model_len": 8192,
            "max_num_seqs": 16,
            "max_images_per_prompt": 8,
            "engine_kwargs": {"enforce_eager": True},
        },
        "preprocess": {"max_num": 6, "multi_image_max_num": 6, "video": {"num_segments": 8}},
        "task": [
            {"name": "caption", "preset": "short_caption", "sampling": {"max_tokens": 24}},
            {
                "name": "labels",
                "prompt": "Label the image as JSON.",
                "sampling": {"max_tokens": 48, "json_schema": LABELS_SCHEMA},
            },
        ],
        "runtime": {
            "use_gpu": False,
            "replicas": 1,
            "cpu_workers": 2,
            "cpus_per_worker": 0.5,
            "engine_cpus": 1,
            "preprocess_batch_size": 2,
            "engine_batch_size": 16,
        },
        "output": {"path": str(tmp_path / "out"), "rows_per_file": 8},
    }


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def demo_yaml(tmp_path, demo_data) -> Path:
    return write_yaml(tmp_path / "job.yaml", demo_data)


def config_error(path: Path, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# -- loading ------------------------------------------------------------------------------


def test_load_demo_like_yaml(demo_yaml, demo_data):
    cfg = load_config(demo_yaml)
    assert isinstance(cfg, JobConfig)
    assert cfg.input.path == demo_data["input"]["path"]
    assert cfg.input.passthrough == ("source",)
    assert cfg.model.dtype == "float32" and cfg.model.engine_kwargs == {"enforce_eager": True}
    assert cfg.preprocess.max_num == 6 and cfg.preprocess.video.num_segments == 8
    assert [t.name for t in cfg.task] == ["caption", "labels"]
    assert cfg.task[0].preset == "short_caption" and cfg.task[0].sampling.max_tokens == 24
    assert cfg.task[1].sampling.json_schema == LABELS_SCHEMA
    assert cfg.runtime.use_gpu is False and cfg.runtime.cpus_per_worker == 0.5
    assert cfg.output.rows_per_file == 8
    # untouched sections take their defaults
    assert cfg.runtime.retry_failed is False
    assert cfg.output.flush_interval_s == 60.0


def test_repo_demo_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert [t.name for t in cfg.task] == ["caption", "labels"]


def test_config_is_frozen(demo_yaml):
    cfg = load_config(demo_yaml)
    with pytest.raises(ValidationError):
        cfg.runtime.replicas = 3


def test_single_task_mapping_is_a_list(tmp_path, demo_data):
    demo_data["task"] = {"name": "only", "prompt": "Describe."}
    path = write_yaml(tmp_path / "one.yaml", demo_data)
    cfg = load_config(path)
    assert [(t.name, t.prompt) for t in cfg.task] == [("only", "Describe.")]
    # `task.0.*` addresses the single task too
    cfg = load_config(path, ["task.0.prompt=Other."])
    assert [(t.name, t.prompt) for t in cfg.task] == [("only", "Other.")]


def test_single_task_mapping_via_model_validate(demo_data):
    demo_data["task"] = {"name": "only", "preset": "detailed_caption"}
    assert [t.name for t in JobConfig.model_validate(demo_data).task] == ["only"]


# -- overrides --------------------------------------------------------------------------------


def test_overrides_of_nested_keys(demo_yaml):
    cfg = load_config(
        demo_yaml,
        [
            "output.path=/x",
            "runtime.replicas=4",
            "task.0.sampling.max_tokens=8",
            "task.1.sampling.temperature=0.5",
            "model.engine_kwargs={a: 1, b: [x, y]}",
            "runtime.ray_address=null",
            "input.passthrough=[source, lang]",
            "preprocess.fetch.max_bytes=1000",  # a section absent from the file is created
            "runtime.retry_failed=true",
        ],
    )
    assert cfg.output.path == "/x"
    assert cfg.runtime.replicas == 4 and type(cfg.runtime.replicas) is int
    assert cfg.task[0].sampling.max_tokens == 8
    assert cfg.task[1].sampling.temperature == 0.5
    assert cfg.task[1].sampling.max_tokens == 48  # siblings untouched
    assert cfg.model.engine_kwargs == {"a": 1, "b": ["x", "y"]}
    assert cfg.runtime.ray_address is None
    assert cfg.input.passthrough == ("source", "lang")
    assert cfg.preprocess.fetch.max_bytes == 1000
    assert cfg.runtime.retry_failed is True


def test_later_override_wins(demo_yaml):
    assert load_config(demo_yaml, ["runtime.replicas=2", "runtime.replicas=3"]).runtime.replicas == 3


def test_value_keeps_everything_after_first_equals(demo_yaml):
    cfg = load_config(demo_yaml, ["task.1.prompt=a=b"])
    assert cfg.task[1].prompt == "a=b"


def test_apply_overrides_pure():
    data = {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}
    out = apply_overrides(data, ["a.b=2", "a.c.d=str", "l.1.x=5", "l.0={y: 3}", "top="])
    assert out == {"a": {"b": 2, "c": {"d": "str"}}, "l": [{"y": 3}, {"x": 5}], "top": ""}


@pytest.mark.parametrize(
    "item,fragment",
    [
        ("output.path", "expected dotted.key=value"),
        ("=3", "expected dotted.key=value"),
        ("  =3", "expected dotted.key=value"),
        ("output.path.x=1", "cannot set 'x' here"),
        ("output.path.x.y=1", "'x' is not a section"),
        ("task.5.name=x", "'5' is not a section"),
        ("task.name=x", "cannot set 'name' here"),
    ],
)
def test_malformed_override(demo_yaml, item, fragment):
    msg = config_error(demo_yaml, [item])
    assert fragment in msg and repr(item) in msg


@pytest.mark.parametrize("item", ["task.1.prompt=[unclosed", "task.1.prompt=@home", "input.path=*.jsonl"])
def test_override_with_invalid_yaml_value(demo_yaml, item):
    msg = config_error(demo_yaml, [item])
    assert item.split("=")[0] in msg


# -- errors name the field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["runtime.replica=4"], ["runtime.replica"]),
        (["task.0.preset=long_caption"], ["task.0.preset", "'short_caption'", "'detailed_caption'"]),
        (["task.0.prompt=also a prompt"], ["task.0", "exactly one of preset, prompt, use_row_question"]),
        (["task.0.preset=null"], ["task.0", "exactly one of preset, prompt, use_row_question"]),
        (["task.1.use_row_question=true"], ["task.1", "exactly one"]),
        (["task.1.name=caption"], ["names must be unique", "caption"]),
        (["task.0.name=bad name"], ["task.0.name"]),
        (["task=[]"], ["at least one task"]),
        (["model.max_dynamic_patch=4"], ["preprocess.max_num=6", "model.max_dynamic_patch=4"]),
        (["preprocess.video.num_segments=9"], ["preprocess.video.num_segments=9", "model.max_images_per_prompt=8"]),
        (["preprocess.video.num_segment=4"], ["preprocess.video.num_segment"]),
        (["preprocess.fetch.allowed_schemes=[s3, file]"], ["preprocess.fetch.allowed_schemes"]),
        (["task.1.sampling.json_schema={type: 5}"], ["task.1.sampling.json_schema", "not a valid JSON schema"]),
        (
            ["task.1.sampling.json_schema={type: object, properties: {a: {type: strin}}}"],
            ["task.1.sampling.json_schema", "not a valid JSON schema"],
        ),
        (["task.0.sampling.top_k=0"], ["task.0.sampling.top_k", "top_k must be -1"]),
        (["task.0.sampling.top_k=-2"], ["task.0.sampling.top_k"]),
        (["task.0.sampling.top_p=0"], ["task.0.sampling.top_p"]),
        (["task.0.sampling.min_tokens=25"], ["task.0.sampling", "min_tokens=25 is more than max_tokens=24"]),
        (["task.1.sampling.min_tokens=1"], ["task.1.sampling", "min_tokens cannot be combined with json_schema"]),
        (["runtime.replicas=0"], ["runtime.replicas"]),
        (["runtime.replicas=four"], ["runtime.replicas"]),
        (["input.limit=0"], ["input.limit"]),
        (["model.gpu_memory_utilization=1.5"], ["model.gpu_memory_utilization"]),
        (["task.0.sampling.n=3"], ["task.0.sampling", "n=3 with temperature=0", "sampling.temperature > 0"]),
        (["task.1.prompt=Is it a {label!r}?"], ["task 'labels': prompt", "no conversions"]),
        (["task.1.prompt='Reply as JSON like {\"a\": 1}'"], ["task 'labels': prompt", "{{ or }}"]),
        (["task.1.prompt=Is it a {}?"], ["task 'labels': prompt", "must name a column"]),
        (["input.format=openai_batch"], ["input.format=openai_batch", "use_row_question: true"]),
        (["output.format=openai_batch"], ["output.format=openai_batch", "give one task, not 2"]),
        (["input.format=tar"], ["input.format", "'webdataset'", "'openai_batch'"]),
    ],
    ids=lambda v: v[0] if isinstance(v, list) and v and "=" in v[0] else None,
)
def test_invalid_config_names_the_field(demo_yaml, overrides, fragments):
    msg = config_error(demo_yaml, overrides)
    assert msg.startswith("invalid job config:")
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.max_dynamic_patch=6"],  # max_num == max_dynamic_patch is fine
        ["preprocess.video.num_segments=8"],  # == max_images_per_prompt is fine
        ["task.0.sampling.top_k=-1"],
        ["task.0.sampling.top_k=1"],
        ["task.1.sampling.json_schema=null"],
        ["task.0.sampling.min_tokens=24"],  # == max_tokens is fine
        ["task.0.sampling.n=3", "task.0.sampling.temperature=0.5"],
        ["task.1.prompt=Label the {{image}} as JSON."],
    ],
)
def test_boundaries_accepted(demo_yaml, overrides):
    load_config(demo_yaml, overrides)


@pytest.mark.parametrize("section", ["input", "model", "task", "output"])
def test_required_section_missing(tmp_path, demo_data, section):
    del demo_data[section]
    msg = config_error(write_yaml(tmp_path / "c.yaml", demo_data), [])
    assert f"  {section}: Field required" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert str(path) in config_error(path, [])


def test_broken_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: [unclosed\n")
    assert str(path) in config_error(path, [])


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "top level must be a mapping" in config_error(path, [])


# -- tasks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(CAPTION_PRESETS))
def test_question_for_preset(preset):
    task = TaskConfig(name="t", preset=preset)
    assert task.question_for(None) == CAPTION_PRESETS[preset]
    assert task.question_for("row question is ignored") == CAPTION_PRESETS[preset]


def test_question_for_prompt():
    task = TaskConfig(name="t", prompt="Count the cats.")
    assert task.question_for(None) == "Count the cats."
    assert task.question_for("ignored") == "Count the cats."


def test_question_for_row_question():
    task = TaskConfig(name="t", use_row_question=True)
    assert task.question_for("What colour?") == "What colour?"
    assert task.question_for("") is None
    assert task.question_for(None) is None


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_validate_config_only_ok(demo_yaml, capsys):
    assert main(["validate", str(demo_yaml), "--config-only"]) == 0
    out = capsys.readouterr().out
    assert "config ok: 2 task(s) ['caption', 'labels']" in out
    assert "manifest:" not in out  # --config-only reads no manifest (it does not even exist here)


def test_cli_validate_set_is_applied(demo_yaml, capsys):
    assert main(["validate", str(demo_yaml), "--config-only", "--set", "output.path=/elsewhere"]) == 0
    assert "output /elsewhere" in capsys.readouterr().out


def test_cli_validate_bad_config(demo_yaml, capsys):
    assert main(["validate", str(demo_yaml), "--config-only", "--set", "runtime.replica=4"]) == 2
    captured = capsys.readouterr()
    assert "config ok" not in captured.out
    assert captured.err.startswith("error: invalid job config")
    assert "runtime.replica" in captured.err


def test_cli_validate_reads_manifest_sample(demo_yaml, demo_data, tmp_path, capsys, tiny_model_dir):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    Path(demo_data["input"]["path"]).write_text(
        "".join(json.dumps({"id": f"r{i}", "image": str(image)}) + "\n" for i in range(5))
    )
    # validate also loads the model's config and tokenizer (tests/model/test_check.py)
    assert main(["validate", str(demo_yaml), "--sample", "2", "--set", f"model.path={tiny_model_dir}"]) == 0
    out = capsys.readouterr().out
    # the rows as `plan` checks them: "x" has no image header (validate said "image ok" before)
    assert "manifest: 2 sampled row(s)" in out and f"r1: decode_error: {image}: no image header" in out
    assert "r2" not in out


def test_cli_validate_missing_manifest(demo_yaml, capsys, tiny_model_dir):
    assert main(["validate", str(demo_yaml), "--set", f"model.path={tiny_model_dir}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_validate_invalid_yaml_override_exits_2(demo_yaml, capsys):
    assert main(["validate", str(demo_yaml), "--config-only", "--set", "task.1.prompt=[unclosed"]) == 2
    assert "task.1.prompt" in capsys.readouterr().err


def test_passthrough_clashing_with_output_columns_is_a_config_error():
    data = {
        "input": {"path": "m.jsonl", "passthrough": ["status"]},
        "model": {"path": "x"},
        "task": {"name": "c", "preset": "short_caption"},
        "output": {"path": "o"},
    }
    with pytest.raises(ValueError, match="input.passthrough.*status"):
        JobConfig.model_validate(data)


@pytest.mark.parametrize(
    ("max_num_seqs", "batch", "tasks", "explicit", "expected"),
    [
        (16, 8, 2, None, 8),  # benchmarks/engine_feed.py: 8 x 16 requests = 8 batches of 8 rows x 2 tasks
        (128, 256, 1, None, 4),  # configs/nightly-caption.yaml: big batches, never fewer than 4
        (64, 32, 1, None, 16),  # the defaults
        (65, 32, 1, None, 17),  # rounded up, never below 8 x max_num_seqs requests
        (16, 8, 2, 2, 2),  # an explicit value is taken as given
    ],
)
def test_engine_batches_in_flight_cover_max_num_seqs(demo_data, max_num_seqs, batch, tasks, explicit, expected):
    data = {**demo_data, "model": {**demo_data["model"], "max_num_seqs": max_num_seqs}}
    data["runtime"] = {**data["runtime"], "engine_batch_size": batch}
    if explicit:
        data["runtime"]["engine_batches_in_flight"] = explicit
    data["task"] = [{"name": f"t{i}", "preset": "short_caption"} for i in range(tasks)]
    assert JobConfig.model_validate(data).engine_batches_in_flight() == expected


def test_prompt_templates_and_their_columns(demo_yaml):
    cfg = load_config(demo_yaml, ["task.1.prompt=Is it a {label} by {who}? {{literal}}", "task.0.preset=null",
                                  "task.0.prompt=Or a {label}?"])  # fmt: skip
    assert cfg.prompt_columns() == ("label", "who")
    assert cfg.task[1].question_for(None, {"label": "cat", "who": "Ann"}) == "Is it a cat by Ann? {literal}"


def test_an_openai_batch_input_gets_one_chat_task(tmp_path, demo_data):
    demo_data["input"]["format"] = "openai_batch"
    del demo_data["task"]
    cfg = load_config(write_yaml(tmp_path / "c.yaml", demo_data), ["output.format=openai_batch"])
    assert [(t.name, t.use_row_question) for t in cfg.task] == [("chat", True)]
