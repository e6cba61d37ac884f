"""Run a RayJob entrypoint as the head does: through /bin/sh, the real `internvl-rayjob` (the console
script pyproject.toml declares, which the image's `pip install .` puts on PATH) with a stand-in
`internvl-batch` that records each call and exits with the codes a test scripts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.manifests import REPO

ENTRYPOINT_COMMAND = "internvl-rayjob"

# The console script as pip writes it: the declared module:function, this interpreter, the repo first.
_SCRIPT = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from {module} import {func}
sys.exit({func}())
"""


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})


# Exits with the next code scripted for its subcommand (the last one repeats) and logs its argv.
_STUB = """#!{python}
import json, os, sys
log, step = os.environ["STUB_LOG"], sys.argv[1]
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
codes = os.environ.get("STUB_" + step.upper(), "0").split()
code = int(codes[min(sum(c[0] == step for c in calls), len(codes) - 1)])
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(code)
"""


@dataclass
class EntrypointRun:
    code: int
    calls: list[list[str]]  # argv of each `internvl-batch` call, in order
    stdout: str
    stderr: str


def run_entrypoint(
    entrypoint: str,
    tmp: Path,
    image_files: dict[str, str] | None = None,
    codes: dict[str, str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60,
) -> EntrypointRun:
    """Run `entrypoint` with /bin/sh as Ray's job supervisor does on the head (HTTPMode).

    codes: exit codes per subcommand, e.g. {"validate": "0", "run": "1 1 0"}; extra_env: more
    environment (INTERNVL_SCHEDULED_TIME, credentials, ...); none is inherited from the test's.
    """
    target = console_scripts().get(ENTRYPOINT_COMMAND)
    assert target, f"pyproject.toml declares no [project.scripts] {ENTRYPOINT_COMMAND}"
    module, func = target.split(":")
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / ENTRYPOINT_COMMAND
    script.write_text(_SCRIPT.format(python=sys.executable, repo=str(REPO), module=module, func=func))
    script.chmod(0o755)
    stub = bin_dir / "internvl-batch"
    stub.write_text(_STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "STUB_LOG": str(log),
        "INTERNVL_RETRY_PAUSE_S": "0",
        **{f"STUB_{k.upper()}": v for k, v in (codes or {}).items()},
    }
    for name in ("INTERNVL_SCHEDULED_TIME", "RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE", "INTERNVL_LEASE_HOLDER"):
        env.pop(name, None)
    env.update(extra_env or {})
    res = subprocess.run(["sh", "-c", entrypoint], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return EntrypointRun(res.returncode, calls, res.stdout, res.stderr)


def entrypoint_line(*args: str) -> str:
    return shlex.join([ENTRYPOINT_COMMAND, *args])
