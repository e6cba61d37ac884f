"""Run a RayJob entrypoint as the head does: the real docker/rayjob-entrypoint.sh through /bin/sh, with a
stand-in `internvl-batch` that records each call and exits with the codes a test scripts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.k8s.dockerfile import repo_path_in_image
from tests.k8s.manifests import REPO

ENTRYPOINT_COMMAND = "internvl-rayjob"
ENTRYPOINT_IN_IMAGE = f"/usr/local/bin/{ENTRYPOINT_COMMAND}"

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
    entrypoint: str, tmp: Path, image_files: dict[str, str], codes: dict[str, str] | None = None
) -> EntrypointRun:
    """Run `entrypoint` with /bin/sh as Ray's job supervisor does on the head (HTTPMode), the
    script that the image installs as `internvl-rayjob` taken from the repo.

    codes: exit codes per subcommand, e.g. {"validate": "0", "run": "1 1 0"}.
    """
    script = repo_path_in_image(ENTRYPOINT_IN_IMAGE, image_files)
    assert script, f"docker/Dockerfile installs nothing at {ENTRYPOINT_IN_IMAGE}"
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / ENTRYPOINT_COMMAND).unlink(missing_ok=True)
    (bin_dir / ENTRYPOINT_COMMAND).symlink_to(REPO / script)
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
    res = subprocess.run(["sh", "-c", entrypoint], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return EntrypointRun(res.returncode, calls, res.stdout, res.stderr)


def entrypoint_line(*args: str) -> str:
    return shlex.join([ENTRYPOINT_COMMAND, *args])
