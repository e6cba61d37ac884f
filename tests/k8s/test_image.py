"""docker/Dockerfile and .dockerignore: the image holds the project and its entrypoint, installs '.[gpu]' in a
layer only pyproject.toml invalidates, runs CUDA torch on a base of the same CUDA, and holds no credentials."""

from __future__ import annotations

import importlib.util
import re
import shlex

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


# The CUDA that torch's PyPI wheel is built for, per vLLM pin: vllm==0.32.0 pins torch==2.13.0,
# whose Linux wheel depends on cuda-toolkit==13.0.3. When the pin moves, look it up again
# (pip's report of the wheel's requirements) and move the base image's -cuXYZ with it.
TORCH_CUDA_OF_VLLM = {"0.32.0": "13.0"}


def _check_cuda():
    spec = importlib.util.spec_from_file_location("check_cuda", REPO / "docker" / "check_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_vllm_pin() -> str:
    m = re.search(r'gpu\s*=\s*\[\s*"vllm==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert m, "pyproject.toml's gpu extra must pin vllm exactly"
    return m.group(1)


def test_base_image_cuda_is_torchs_and_the_build_checks_it(dockerfile):
    base, stage = final_stage(dockerfile)
    pin = _gpu_vllm_pin()
    assert pin in TORCH_CUDA_OF_VLLM, f"vllm=={pin}: which CUDA is its torch built for? (see TORCH_CUDA_OF_VLLM)"
    cuda = TORCH_CUDA_OF_VLLM[pin]
    assert base.endswith(f"-cu{cuda.replace('.', '')}"), f"{base}: torch runs CUDA {cuda}; pin that -cuXYZ tag"
    runs = [args for instr, args in stage if instr == "RUN"]
    deps = next(i for i, r in enumerate(runs) if "'.[gpu]'" in r)
    check = next((i for i, r in enumerate(runs) if "check_cuda.py" in r), None)
    assert check is not None and check > deps, "check torch's CUDA after the dependencies are installed"
    assert _check_cuda().MIN_DRIVER[cuda].startswith("580"), "CUDA 13.0 needs an R580 driver"


def test_the_cuda_check_fails_builds_that_would_fail_on_nodes():
    check = _check_cuda()
    assert check.problems("13.0", "13.0.0") == []
    assert check.problems("13.0", "12.1.1"), "the old -gpu alias under a CUDA 13 torch"
    assert check.problems(None, "13.0.0"), "a CPU torch slipped in"
    assert check.problems("13.0", None), "not a CUDA base image"


def test_dependency_layer_depends_only_on_pyproject(dockerfile):
    _, stage = final_stage(dockerfile)
    deps = next(i for i, (instr, args) in enumerate(stage) if instr == "RUN" and "'.[gpu]'" in args)
    copied = [shlex.split(args) for instr, args in stage[:deps] if instr in ("COPY", "ADD")]
    sources = {t for tokens in copied for t in tokens[:-1] if not t.startswith("--")}
    assert sources == {"pyproject.toml"}, f"the vLLM/torch layer is rebuilt when any of {sources} changes"


def test_the_rayjob_entrypoint_is_a_console_script_the_image_installs_and_runs(dockerfile):
    from tests.k8s.entrypoint_run import ENTRYPOINT_COMMAND, console_scripts

    module, func = console_scripts()[ENTRYPOINT_COMMAND].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    _, stage = final_stage(dockerfile)
    runs = [args for instr, args in stage if instr == "RUN"]
    project = next(i for i, a in enumerate(runs) if "pip install --no-deps ." in a)
    assert f"{ENTRYPOINT_COMMAND} --help" in runs[project], "the build runs the installed entrypoint once"
