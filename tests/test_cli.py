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
