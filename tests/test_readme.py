"""The README's command lines, run as printed after its two set-up commands.

Every line of a ```bash block in README.md is a command a newcomer will paste. The ones this
machine can run (`make ...`, `.venv/bin/...`) run here, in README order, after `make demo`
(which must print no ERROR and no traceback), each checked against the exit code the README
states (`# exit N` at the end of the line; 0 otherwise). The rest must be cluster-side
commands (kubectl, docker, pip, ...: no Docker engine or Kubernetes here); any other line
fails the test, so the README cannot drift from the CLI again.

Commands quoted in the prose or tables (`.venv/bin/...` in backquotes, `$ ...` lines of a
sample output) are held to the same: an `internvl-batch` line runs, a `pytest` line must
select at least one test, a benchmark line must be a row of `make bench` (whose options
tests/benchmarks parses), a `make` target must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

from benchmarks import suite

REPO = Path(__file__).resolve().parents[1]
# Commands for a cluster or an image registry: shown, not runnable on this machine.
ELSEWHERE = ("kubectl ", "docker ", "pip install ", "helm ", "aws ", "gcloud ")
# The set-up commands themselves: `make demo` runs first (below), `make test` is this suite.
SETUP = ("make demo", "make test")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\b")


def readme_commands(text: str) -> list[tuple[str, int]]:
    """(command, expected exit code) of every line of every ```bash block, in order."""
    commands, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash" if not inside else False
            continue
        if not inside or not line.strip() or line.lstrip().startswith("#"):
            continue
        code = _EXIT.search(line)
        command = re.sub(r"\s+#.*$", "", line).strip()
        commands.append((command, int(code.group(1)) if code else 0))
    return commands


def quoted_commands(text: str) -> list[str]:
    """Commands quoted outside the ```bash blocks: `.venv/bin/...` / `make ...` in backquotes
    and the `$ ...` lines of sample outputs."""
    found = [re.sub(r"\s+#.*$", "", m.group(1)).strip() for m in re.finditer(r"^\$ (.+)$", text, re.M)]
    found += [m.group(1) for m in re.finditer(r"`((?:\.venv/bin/|make )[^`\n]+)`", text)]
    return [c for c in found if len(c.split()) > 1]  # a program's name alone is no command line


# What the Makefile and tests/conftest.py export for the suite: a newcomer's shell has none.
NOT_IN_A_NEWCOMERS_SHELL = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CACHE_ROOT",
                            "TORCHINDUCTOR_CACHE_DIR", "PYTHONPATH")  # fmt: skip


def _run(command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_NEWCOMERS_SHELL}
    env["RAY_ADDRESS"] = "local"  # never join a cluster another test left behind
    return subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _selected(nodeids: list[str], files: list[str], keyword: str | None) -> list[str]:
    """The collected tests a `pytest FILES -k KEYWORD` line selects (pytest's own -k grammar,
    names matched as pytest matches them: a substring of the test's or a parent's name)."""
    expr = Expression.compile(keyword) if keyword else None
    chosen = []
    for nodeid in nodeids:
        path, _, rest = nodeid.partition("::")
        if not any(path == f or path.startswith(f.rstrip("/") + "/") for f in files):
            continue
        names = [*Path(path).parts, *rest.split("::")]
        if expr is None or expr.evaluate(lambda sub, names=names, **_: any(sub.lower() in n.lower() for n in names)):
            chosen.append(nodeid)
    return chosen


def _pytest_line(command: str) -> tuple[list[str], str | None]:
    argv = shlex.split(command)[1:]
    keyword = argv[argv.index("-k") + 1] if "-k" in argv else None
    return [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "-k")], keyword


# -- the parsers (fast) ---------------------------------------------------------------------------


def test_readme_commands_are_parsed_with_their_exit_codes():
    text = "x\n```bash\n.venv/bin/internvl-batch run c.yaml   # runs it\nmake demo\n.venv/bin/x y  # exit 2: why\n```\n"
    assert readme_commands(text) == [(".venv/bin/internvl-batch run c.yaml", 0), ("make demo", 0), (".venv/bin/x y", 2)]
    assert readme_commands("```\n$ not bash\n```\n```yaml\na: 1\n```\n") == []


def test_quoted_commands_are_found_in_prose_tables_and_sample_outputs():
    text = ("run `.venv/bin/pytest tests/x.py -k 'a and b'` | `make bench` |\n```\n"
            "$ .venv/bin/internvl-batch plan c.yaml   # after make demo\nplan: ...\n```\n`internvl-batch plan CONFIG`\n"
            "call it as `.venv/bin/internvl-batch`\n")  # fmt: skip
    assert quoted_commands(text) == [".venv/bin/internvl-batch plan c.yaml", ".venv/bin/pytest tests/x.py -k 'a and b'",
                                     "make bench"]  # fmt: skip


def test_a_pytest_line_selects_as_pytest_does():
    ids = ["tests/job/test_a.py::test_driver_killed_while_planning", "tests/job/test_a.py::test_driver_killed_mid_run",
           "tests/job/test_b.py::test_other"]  # fmt: skip
    files, keyword = _pytest_line('.venv/bin/pytest tests/job/test_a.py -k "driver_killed and planning"')
    assert (files, keyword) == (["tests/job/test_a.py"], "driver_killed and planning")
    assert _selected(ids, files, keyword) == ids[:1]
    assert _selected(ids, ["tests/job"], None) == ids
    assert _selected(ids, files, "no_such_test") == []  # what a renamed test looks like


# -- the README, run (slow: `make demo` and the CLI) ----------------------------------------------


@pytest.fixture(scope="module")
def demo():
    """`make demo`, as the README's quick start runs it."""
    return _run("make demo")


@pytest.mark.slow
def test_the_demo_succeeds_and_logs_no_error_and_no_traceback(demo):
    text = demo.stdout + demo.stderr
    assert demo.returncode == 0, text[-4000:]
    bad = [line for line in text.splitlines() if re.search(r"\bERROR\b|Traceback", line)]
    assert not bad, "\n".join(bad[:20])
    assert (REPO / "output" / "demo" / "_SUCCESS").is_file()


@pytest.mark.slow
def test_every_readme_command_runs_as_printed(demo):
    assert demo.returncode == 0
    text = (REPO / "README.md").read_text()
    commands = readme_commands(text)
    assert len(commands) >= 8, "the README's ```bash blocks are gone"
    failures, ran = [], set()
    for command, expected in commands:
        if command.startswith(SETUP) or command.startswith(ELSEWHERE):
            continue
        if not command.startswith((".venv/bin/", "make ")):
            failures.append(f"{command!r}: neither runnable here (.venv/bin/..., make ...) nor a cluster command")
            continue
        run = _run(command)
        ran.add(command)
        if run.returncode != expected:
            failures.append(f"{command!r}: exit {run.returncode}, the README says {expected}\n"
                            f"{(run.stdout + run.stderr)[-1500:]}")  # fmt: skip
    for command in quoted_commands(text):
        if command.startswith(".venv/bin/internvl-batch") and command not in ran:
            run = _run(command)
            ran.add(command)
            if run.returncode != 0:
                failures.append(f"{command!r} (quoted): exit {run.returncode}\n{(run.stdout + run.stderr)[-1500:]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_every_quoted_command_names_what_exists():
    """Quoted pytest lines select tests, benchmark lines are `make bench` rows, make targets exist."""
    text = (REPO / "README.md").read_text()
    quoted = quoted_commands(text)
    pytest_lines = [c for c in quoted if c.startswith(".venv/bin/pytest ")]
    assert pytest_lines, "the README quotes no test command"
    files = sorted({f for c in pytest_lines for f in _pytest_line(c)[0]})
    collect = _run(".venv/bin/python -m pytest --collect-only -q -p no:cacheprovider " + " ".join(files), timeout=300)
    assert collect.returncode == 0, collect.stdout[-2000:] + collect.stderr[-2000:]
    nodeids = [line for line in collect.stdout.splitlines() if "::" in line]
    failures = [c for c in pytest_lines if not _selected(nodeids, *_pytest_line(c))]
    bench = {row.command for row in suite.ROWS}
    failures += [f"{c} (not a `make bench` row)" for c in quoted
                 if c.startswith(".venv/bin/python benchmarks/") and c not in bench]  # fmt: skip
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    failures += [f"{c} (no such make target)" for c in quoted if c.startswith("make ") and c.split()[1] not in targets]
    others = [c for c in quoted if not c.startswith((".venv/bin/pytest ", ".venv/bin/python benchmarks/", "make ",
                                                      ".venv/bin/internvl-batch"))]  # fmt: skip
    failures += [f"{c} (quoted, checked by nothing)" for c in others]
    assert not failures, "\n".join(failures)
