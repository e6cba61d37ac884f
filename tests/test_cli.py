"""The command line a newcomer meets: help for every option, --version, and `report`'s refusals."""

import argparse
import json

import pytest

from internvl_batch import __version__
from internvl_batch.cli import build_parser, main


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix}{name} ")
        else:
            yield prefix + "/".join(action.option_strings or [action.dest]), action


def test_every_option_and_argument_has_help():
    missing = [name for name, action in _actions(build_parser()) if not (action.help or "").strip()]
    assert not missing


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"internvl-batch {__version__}"


@pytest.mark.parametrize("what", ["empty folder", "parent of an output", "the _SUCCESS file", "absent"])
def test_report_refuses_what_is_no_job_output_and_writes_nothing(tmp_path, capsys, what):
    output = tmp_path / "parent" / "run-1"
    (output / "_state").mkdir(parents=True)
    (output / "_state" / "job.json").write_text(json.dumps({"shard_rows": 10}))
    (output / "_SUCCESS").write_text("{}")
    (tmp_path / "empty").mkdir()
    path = {"empty folder": tmp_path / "empty", "parent of an output": tmp_path / "parent",
            "the _SUCCESS file": output / "_SUCCESS", "absent": tmp_path / "absent"}[what]  # fmt: skip
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "expected a job's output.path" in err and "Traceback" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_plan_exits_1_when_the_store_fails_for_now_and_2_when_the_path_is_wrong(tmp_path, monkeypatch, capsys):
    """Exit 2 means "fix it first": a throttled or unreachable store is not that."""
    import yaml

    from internvl_batch.preflight import estimate
    from internvl_batch.storage.retry import StorageError

    cfg = tmp_path / "job.yaml"
    job = {"input": {"path": str(tmp_path / "absent.jsonl")}, "model": {"path": "m"},
           "task": {"name": "c", "preset": "short_caption"}, "output": {"path": str(tmp_path / "out")}}  # fmt: skip
    cfg.write_text(yaml.safe_dump(job))
    assert main(["plan", str(cfg)]) == 2 and "does not exist" in capsys.readouterr().err

    def throttled(*a, **kw):
        raise StorageError("manifest_list of s3://b/m: giving up after 6 attempts with transient errors")

    monkeypatch.setattr(estimate, "make_preflight", throttled)
    assert main(["plan", str(cfg)]) == 1 and "may pass on a retry" in capsys.readouterr().err


# -- validate and plan: one per-row check -------------------------------------------------------


def _validate_rows(out: str, tasks: list[str]) -> dict[str, dict[str, str]]:
    """validate's row lines, `  ID: STATUS[: why]` or `  ID: TASK STATUS, TASK STATUS[: why]`: {id: {task: status}}."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  "):
            rid, shown = line.strip().split(": ")[:2]
            pairs = [p.split(" ") for p in shown.split(", ")]
            rows[rid] = dict.fromkeys(tasks, shown) if len(pairs) == 1 and len(pairs[0]) == 1 else dict(pairs)
    return rows


@pytest.fixture
def bad_rows_job(tmp_path, tiny_model_dir):
    """Good rows, a corrupt image, a missing file, a row without its id, a repeated id, a
    row without the qa task's question, rows that overflow max_model_len 1024, a broken line."""
    import yaml

    from tests.observe import jobs

    media = jobs.write_media(tmp_path / "media")
    extra = ({"image": media["square"], "question": "q"}, {"id": "square-0", "image": media["wide"]})
    jobs.write_manifest(tmp_path / "m.jsonl", media, extra=extra[:1])
    with (tmp_path / "m.jsonl").open("a") as f:
        f.write(json.dumps(extra[1]) + "\n")  # after the first square-0: a duplicate
    cfg = jobs.job_config(tmp_path / "m.jsonl", tmp_path / "out", str(tiny_model_dir), model={"max_model_len": 1024})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path), tmp_path / "m.jsonl"


def test_validate_and_plan_predict_the_same_status_for_every_sampled_row(bad_rows_job, capsys):
    config, manifest = bad_rows_job
    assert main(["validate", config, "--sample", "50"]) == 0  # bad rows are data: the job records them
    out = capsys.readouterr().out
    validated = _validate_rows(out, ["caption", "qa"])
    assert main(["plan", config, "--sample", "50", "--json"]) == 0
    planned = {r["id"]: r["status"] for r in json.loads(capsys.readouterr().out)["sampled"]}
    assert validated == planned  # row by row, task by task
    assert len(validated) == 12  # every row: 9, the id-less one, the broken line, the repeated id
    both = {"caption": "", "qa": ""}
    assert validated["corrupt-0"] == dict.fromkeys(both, "decode_error")  # validate said "image ok" before
    assert validated["missing-0"] == dict.fromkeys(both, "fetch_error")
    assert validated[f"{manifest}#1"] == dict.fromkeys(both, "invalid_row")  # no id: its file and line
    assert validated[f"{manifest}#11"] == dict.fromkeys(both, "invalid_row")  # the broken line
    assert validated[f"square-0#dup@{manifest}#12"] == dict.fromkeys(both, "invalid_row")
    assert validated["noq-0"] == {"caption": "ok", "qa": "invalid_row"}
    assert validated["square-0"] == dict.fromkeys(both, "ok")
    assert validated["big-0"] == dict.fromkeys(both, "context_overflow")  # 7 tiles: 1,792 image tokens
    # and why, as the job's error column will say it
    assert "  corrupt-0: decode_error: " in out and f"  {manifest}#1: invalid_row: missing 'id'" in out
    assert "  noq-0: caption ok, qa invalid_row: qa: it asks each row's question; this row has none" in out
    assert "  big-0: context_overflow: caption: 1982 prompt tokens reach the engine's max_model_len=1024" in out


def test_validate_and_plan_strict_exit_2_naming_the_refused_statuses(bad_rows_job, capsys, tmp_path):
    config, manifest = bad_rows_job
    for verb in ("validate", "plan"):
        assert main([verb, config, "--strict"]) == 2
        err = capsys.readouterr().err
        assert "--strict: 9 of 12 sampled row(s) predicted refused" in err, err
        for status in ("invalid_row 4", "context_overflow 3", "decode_error 1", "fetch_error 1"):
            assert status in err
    # Only good rows: --strict passes.
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.startswith('{"')]
    keep = [r for r in rows if r.get("id") in ("square-0", "wide-0", "rotated-0") and "question" in r]
    assert len(keep) == 3
    manifest.write_text("".join(json.dumps(r) + "\n" for r in keep))
    for verb in ("validate", "plan"):
        assert main([verb, config, "--strict"]) == 0, capsys.readouterr().err
