"""docker/Dockerfile and .dockerignore: the image holds the project, installs '.[gpu]', and no credentials."""

from __future__ import annotations

import re

from tests.k8s.checks import CREDENTIAL_ENV
from tests.k8s.dockerfile import DOCKERIGNORE, dockerignored, final_stage, repo_path_in_image
from tests.k8s.manifests import REPO


def test_dockerfile_copies_the_project_and_installs_the_gpu_extra(dockerfile, image_files):
    needed = [
        "pyproject.toml",
        "jobs/run_job.py",
        "internvl_batch/__init__.py",
        "internvl_batch/cli.py",
        *[str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml")],
    ]
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if readme:
        needed.append(readme.group(1))  # setuptools reads it when building the package
    copied = set(image_files.values())
    for path in needed:
        assert path in copied or any(path.startswith(c.rstrip("/") + "/") for c in copied), (
            f"docker/Dockerfile does not COPY {path}"
        )
    assert repo_path_in_image("/app/jobs/run_job.py", image_files) == "jobs/run_job.py"
    _, stage = final_stage(dockerfile)
    runs = " ".join(args for instr, args in stage if instr == "RUN")
    assert re.search(r"pip install [^&]*['\"]?\.\[gpu\]", runs), "the image must pip install '.[gpu]'"


def test_dockerignore_keeps_what_the_image_needs(image_files):
    patterns = DOCKERIGNORE.read_text().splitlines()
    needed = {
        "pyproject.toml",
        "jobs/run_job.py",
        "internvl_batch/__init__.py",
        "internvl_batch/config.py",
        *(src for src in image_files.values() if (REPO / src).is_file()),
    }
    for path in needed:
        assert not dockerignored(path, patterns), f".dockerignore excludes {path}, which the image needs"
    for path in (".venv/bin/python", ".cache/tiny/config.json", ".git/HEAD", "internvl_batch/__pycache__/x.pyc"):
        assert dockerignored(path, patterns), f".dockerignore should keep {path} out of the build context"
    assert dockerignored("jobs/run_job.py", [*patterns, "jobs"])  # the check itself works


def test_no_credentials_in_the_image(dockerfile):
    _, stage = final_stage(dockerfile)
    for instr, args in stage:
        if instr in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            for name in names:
                assert not (CREDENTIAL_ENV.search(name) or name.startswith("AWS_")), (
                    f"docker/Dockerfile sets {name}: credentials come from Secrets at run time"
                )
        if instr in ("COPY", "ADD"):
            assert not re.search(r"\.aws|credentials|\.json\b|\.pem\b|\.env\b", args), f"COPY of a secret? {args}"
