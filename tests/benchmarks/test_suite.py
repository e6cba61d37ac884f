"""benchmarks/suite.py (`make bench`): the README's measured table names exactly the suite's
commands, each command parses, and the table is regenerated from the results only."""

import shlex
import subprocess
import sys

import pytest

from benchmarks import common, engine, engine_feed, fetch_latency, peers, scale, suite

PARSERS = {"engine.py": engine, "engine_feed.py": engine_feed, "fetch_latency.py": fetch_latency, "peers.py": peers,
           "scale.py": scale}  # fmt: skip


def _results(rows=suite.ROWS, exit_code=0) -> dict:
    metric = {"metric": "throughput, pre-tiled/vLLM tiles", "median": 0.97, "min": 0.9, "max": 1.1, "n": 3,
              "unit": "x", "fmt": ".2f", "values": [0.9, 0.97, 1.1]}  # fmt: skip
    return {
        row.id: {
            "exit": exit_code,
            "failures": ["ANSWERS DIFFER x: a vs b: 1 of 2 rows: r1"] if exit_code else [],
            "metrics": [metric],
            "machine": "2 x CPU, 24 GiB, no GPU",
            "load": "1.0-1.2",
            "date": "2026-12-07 12:00 UTC",
            "commit": "abc1234",
        }  # fmt: skip
        for row in rows
    }


def _readme_block(text: str) -> str:
    return text[text.index(suite.BEGIN) : text.index(suite.END)]


def test_readme_measured_table_lists_exactly_the_suite_commands():
    block = _readme_block(suite.README.read_text())
    commands = [line.split("`")[1] for line in block.splitlines() if line.startswith("| ") and "`" in line]
    assert commands == [row.command for row in suite.ROWS]


@pytest.mark.parametrize("row", suite.ROWS, ids=lambda r: r.id)
def test_each_command_names_a_benchmark_and_its_options_parse(row):
    argv = shlex.split(row.command)
    assert argv[:2] == [".venv/bin/python", f"benchmarks/{argv[1].split('/')[-1]}"]
    assert (common.REPO / argv[1]).is_file()
    for args in (argv[2:], shlex.split(row.smoke or "")[1:]):  # the command and its smoke variant
        if argv[1].endswith("preprocess.py"):
            continue  # imports torch at module level: checked by --help below
        PARSERS[argv[1].split("/")[-1]].build_parser().parse_args(args)


def test_preprocess_options_parse():
    # Its real option names, in a process of its own (it pins torch to one thread on import).
    proc = subprocess.run([sys.executable, "benchmarks/preprocess.py", "--help"], cwd=common.REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--runs" in proc.stdout and "--no-video" in proc.stdout


def test_readme_is_regenerated_only_from_a_complete_set_of_results(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    before, after = "# x\n\n## Measured\n\n", "\n\nWhat the figures say: hand-written.\n"
    readme.write_text(before + f"{suite.BEGIN} -->\n| old | table |\n{suite.END}" + after)
    monkeypatch.setattr(suite, "README", readme)

    assert not suite.update_readme(_results(suite.ROWS[:-1]))  # one row missing: left alone
    assert "| old | table |" in readme.read_text()

    assert suite.update_readme(_results())
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "| old | table |" not in text
    engine_row = next(line for line in text.splitlines() if "benchmarks/engine.py --runs 3" in line)
    assert "throughput, pre-tiled/vLLM tiles 0.97 (0.90-1.10)x (n=3)" in engine_row


def test_results_md_names_the_machine_and_a_failure():
    md = suite.render_results_md(_results(exit_code=1), suite.ROWS)
    engine_line = next(line for line in md.splitlines() if "benchmarks/engine.py --runs 3" in line)
    assert "FAILED (exit 1): ANSWERS DIFFER x: a vs b: 1 of 2 rows: r1" in engine_line
    assert "2 x CPU, 24 GiB, no GPU; load 1.0-1.2; 2026-12-07 12:00 UTC, commit abc1234" in engine_line
    assert "| 0.97 (0.90-1.10)x | 3 |" in md


def test_run_row_collects_figures_and_failures(tmp_path, monkeypatch):
    script = tmp_path / "b.py"
    script.write_text(
        "from benchmarks import common\n"
        "common.emit('m', [1.0, 2.0, 3.0], 's', '.1f')\n"
        "check = common.AnswerCheck()\n"
        "check.compare('answers', 'a', {'r1': 1}, 'b', {'r1': 2})\n"
        "raise SystemExit(check.exit_code())\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(common.REPO))
    r = suite.run_row(f"{sys.executable} {script}", tmp_path / "log.txt", timeout_s=60)
    assert r["exit"] == 1
    assert r["failures"] == ["ANSWERS DIFFER answers: b vs a: 1 of 1 rows: r1"]
    assert [(m["metric"], m["median"], m["n"]) for m in r["metrics"]] == [("m", 2.0, 3)]
