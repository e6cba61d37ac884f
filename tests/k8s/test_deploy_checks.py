"""What a schema can't check: the entrypoint's script is in the image and its config mounted and
valid, GPUs fit tensor_parallel_size, Ray versions match the pin, credentials come from Secrets,
/dev/shm is memory-backed, the nightly cron names its night and fits its time budget; and each
check catches what it should."""

from __future__ import annotations

import copy
import datetime as dt
import functools
import re
import shutil

import pytest
import yaml

from internvl_batch.config import JobConfig
from tests.k8s.checks import (
    LITERAL_SECRET,
    cron_problems,
    entrypoint_problems,
    gpu_problems,
    image_problems,
    secret_problems,
    shm_problems,
)
from tests.k8s.dockerfile import final_stage
from tests.k8s.entrypoint_run import run_entrypoint
from tests.k8s.manifests import (
    K8S_DIR,
    REPO,
    containers_of,
    docs_of,
    ids,
    job_specs,
    k8s_docs,
    mounted_job_config,
    quantity,
    set_path,
    static_argv,
    walk,
)

PYTHON_TAG = "py311"  # the Python the project is built and tested on

needs_shell = pytest.mark.skipif(
    not (shutil.which("sh") and shutil.which("date") and shutil.which("sed")),
    reason="sh, date and sed are needed to run the entrypoint as the head does",
)


@functools.cache
def ray_pin() -> str:
    m = re.search(r'"ray\[[^\]]*\]==([0-9][0-9A-Za-z.]*)"', (REPO / "pyproject.toml").read_text())
    assert m, 'pyproject.toml must pin ray exactly: "ray[data]==X.Y.Z"'
    return m.group(1)


# == the manifests pass the checks =========================================================


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_entrypoint_runs_a_script_in_the_image_with_a_mounted_config(item, configmaps, image_files):
    _, spec = item
    assert entrypoint_problems(spec, configmaps, image_files) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_mounted_job_config_validates(item, configmaps, validate_config):
    _, spec = item
    code, cfg = validate_config(mounted_job_config(spec, configmaps))
    assert code == 0
    assert cfg.runtime.ray_address == "auto", "on KubeRay the driver joins the job's cluster"
    assert cfg.preprocess.fetch.allow_local is False, "a shared cluster must not read its workers' disks"


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_gpu_workers_fit_the_job_config(item, configmaps, validate_config):
    _, spec = item
    _, cfg = validate_config(mounted_job_config(spec, configmaps))
    assert gpu_problems(spec, cfg) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_dev_shm_is_memory_backed(item):
    assert shm_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_credentials_only_from_secrets(item):
    _, spec = item
    assert secret_problems(spec) == []
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, c in containers_of(spec)
        for e in c.get("env", [])
        if "secretKeyRef" in (e.get("valueFrom") or {})
    ]
    names = {r["name"] for r in refs}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {r["key"] for r in refs}
    readme = (K8S_DIR / "README.md").read_text()
    for name in names:
        assert f"kubectl create secret generic {name}" in readme, f"k8s/README.md must show how to create {name}"


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_job_lifecycle_is_bounded(item):
    _, spec = item
    assert spec.get("shutdownAfterJobFinishes") is True
    assert spec.get("ttlSecondsAfterFinished", 0) > 0
    assert spec.get("activeDeadlineSeconds", 0) > 0
    cluster = spec["rayClusterSpec"]
    for g in cluster["workerGroupSpecs"]:
        assert "minReplicas" in g and "maxReplicas" in g
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    for where, c in containers_of(spec):
        if where != "autoscaler":
            res = c.get("resources") or {}
            assert {"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(
                res.get("limits", {})
            ), f"{where}: set CPU and memory requests and limits"


def test_image_and_ray_versions_match_the_pin(dockerfile):
    pin = ray_pin()
    base, _ = final_stage(dockerfile)
    assert base.startswith("rayproject/ray:"), f"docker/Dockerfile must build FROM an official Ray image, not {base}"
    assert image_problems(base, pin) == []
    assert f"-{PYTHON_TAG}" in base, f"{base}: expected the {PYTHON_TAG} variant"
    assert "-gpu" in base or re.search(r"-cu\d+", base), f"{base}: expected a GPU (gpu/cuXYZ) variant"
    images = [v for d in k8s_docs() for k, v in walk(d.body) if k == "image" and isinstance(v, str)]
    assert images
    for image in images:
        assert image_problems(image, pin) == []
    for _, spec in job_specs():
        assert spec["rayClusterSpec"].get("rayVersion") == pin


def test_nightly_cron_never_overlaps_and_keeps_its_date():
    (cron,) = docs_of("RayCronJob")
    assert cron_problems(cron.body) == []


@needs_shell
def test_nightly_entrypoint_reads_and_writes_yesterdays_prefixes(tmp_path, configmaps, validate_config, image_files):
    (cron,) = docs_of("RayCronJob")
    spec = cron.body["spec"]["jobTemplate"]
    today = dt.datetime.now(dt.UTC).date()
    ran = run_entrypoint(spec["entrypoint"], tmp_path, image_files)
    assert ran.code == 0, ran.stderr
    (validate, run) = ran.calls
    assert validate[0] == "validate" and run[0] == "run" and validate[1:] == run[1:], (
        "validate must check exactly what runs"
    )
    assert run[1] == "/etc/internvl-batch/job.yaml"
    overrides = run[2:][1::2]
    assert run[2:][0::2] == ["--set"] * len(overrides)
    code, cfg = validate_config(mounted_job_config(spec, configmaps), overrides)
    assert code == 0
    nights = {(today - dt.timedelta(days=d)).isoformat() for d in (1, 2)}  # 2: the clock crossed midnight
    (night,) = {n for n in nights if cfg.output.path.rstrip("/").endswith(n)}
    assert f"/{night}/" in cfg.input.path + "/"
    assert cfg.input.path.startswith("s3://") and cfg.output.path.startswith("s3://")
    assert f"night {night} (UTC)" in ran.stdout


@needs_shell
@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_every_entrypoint_validates_then_runs_the_same_arguments(item, tmp_path, image_files):
    _, spec = item
    ran = run_entrypoint(spec["entrypoint"], tmp_path, image_files)
    assert ran.code == 0, ran.stderr
    assert [c[0] for c in ran.calls] == ["validate", "run"]
    assert ran.calls[0][1:] == ran.calls[1][1:]
    if "{night}" not in spec["entrypoint"]:
        argv = static_argv(spec["entrypoint"])
        assert ran.calls[1][1:] == argv[1:], "a plain entrypoint's arguments reach the job unchanged"


# == the checks catch what they should =====================================================


def _adhoc(configmaps: dict[str, dict]) -> tuple[dict, JobConfig]:
    """A copy of the first RayJob's spec (a 1-GPU-per-pod, TP 1 job) and its job config."""
    for doc, spec in job_specs():
        cfg = JobConfig.model_validate(yaml.safe_load(mounted_job_config(spec, configmaps)))
        if doc.kind == "RayJob" and cfg.model.tensor_parallel_size == 1:
            return copy.deepcopy(spec), cfg
    raise AssertionError("the checks below need a RayJob with tensor_parallel_size 1 in k8s/")


def _with(cfg: JobConfig, **sections) -> JobConfig:
    data = cfg.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return JobConfig.model_validate(data)


def test_gpu_check_catches_mismatches(configmaps):
    spec, cfg = _adhoc(configmaps)  # 1 GPU per worker pod, tensor_parallel_size 1
    assert any("multiple of" in p for p in gpu_problems(spec, _with(cfg, model={"tensor_parallel_size": 2})))
    assert any(
        "GPUs; the worker groups" in p
        for p in gpu_problems(spec, _with(cfg, runtime={"replicas": cfg.runtime.replicas + 1}))
    )
    assert any("CPUs" in p for p in gpu_problems(spec, _with(cfg, runtime={"cpu_workers": 100000})))
    assert any("use_gpu" in p for p in gpu_problems(spec, _with(cfg, runtime={"use_gpu": False})))

    def worker(s):
        return s["rayClusterSpec"]["workerGroupSpecs"][0]

    broken = copy.deepcopy(spec)
    worker(broken)["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = 2
    assert any("request" in p for p in gpu_problems(broken, cfg))
    broken = copy.deepcopy(spec)
    worker(broken)["maxReplicas"] = worker(broken)["replicas"] - 1
    assert any("within" in p for p in gpu_problems(broken, cfg))
    broken = copy.deepcopy(spec)
    del worker(broken)["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del worker(broken)["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    assert any("no worker group" in p for p in gpu_problems(broken, cfg))
    head = copy.deepcopy(spec)
    head["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"
    ] = 1
    assert any("head" in p for p in gpu_problems(head, cfg))


def test_entrypoint_check_catches_missing_files_and_mounts(configmaps, image_files):
    spec, _ = _adhoc(configmaps)
    for bad in (
        "python /app/jobs/run_job.py /etc/internvl-batch/job.yaml",  # would skip the validation
        "internvl-rayjob /etc/not-mounted/job.yaml",
        "internvl-rayjob /etc/internvl-batch/other.yaml",
        "internvl-rayjob /etc/internvl-batch/job.yaml --oops",
        "internvl-rayjob /etc/internvl-batch/job.yaml # comment",
        "internvl-rayjob --days-ago 1",
        "internvl-rayjob /etc/internvl-batch/job.yaml --set output.path=s3://b/$(date +%F)",
    ):
        assert entrypoint_problems({**spec, "entrypoint": bad}, configmaps, image_files), bad
    assert entrypoint_problems(spec, {}, image_files)  # the ConfigMap is not in k8s/
    assert entrypoint_problems(spec, configmaps, {})  # the Dockerfile installs nothing


def test_secret_check_catches_inline_credentials(configmaps):
    spec, _ = _adhoc(configmaps)
    env = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "AWS_SECRET_ACCESS_KEY"]
    env.append({"name": "AWS_SECRET_ACCESS_KEY", "value": "not-so-secret"})
    assert secret_problems(spec)
    env[-1] = {"name": "SOME_SETTING", "value": "AKIA" + "ABCDEFGHIJKLMNOP"}
    assert secret_problems(spec)
    env[-1] = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x"}}}
    assert secret_problems(spec)
    assert LITERAL_SECRET.search("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG+bPxRfiCY" + "0123456789")
    assert not LITERAL_SECRET.search("--from-literal=AWS_SECRET_ACCESS_KEY=... AWS_ACCESS_KEY_ID")


def test_image_check_catches_other_ray_versions():
    pin = ray_pin()
    assert image_problems(f"rayproject/ray:{pin}-py311-gpu", pin) == []
    assert image_problems(f"registry.example.com/ml/internvl-batch:0.1.0-ray{pin}", pin) == []
    assert image_problems("rayproject/ray:2.59.0-py311-gpu", pin)
    assert image_problems("rayproject/ray-ml:latest-gpu", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0-ray2.59.0", pin)
    assert image_problems("registry.example.com:5000/ml/internvl-batch", pin)


def test_cron_check_catches_overlap_and_date_risks():
    (cron,) = docs_of("RayCronJob")
    night = "internvl-rayjob --days-ago 1 /c/job.yaml --set input.path=s3://b/m/{night}/"
    for path, value in (
        ("jobTemplate/activeDeadlineSeconds", 86400),
        ("jobTemplate/activeDeadlineSeconds", KeyError),
        ("jobTemplate/backoffLimit", 2),
        ("schedule", "15 22 * * *"),
        ("schedule", "0 */6 * * *"),
        ("timeZone", "Europe/Berlin"),
        ("timeZone", "Not/AZone"),
        ("jobTemplate/shutdownAfterJobFinishes", False),
        ("jobTemplate/entrypoint", "internvl-rayjob /c/job.yaml --set input.path=s3://b/m/x/"),
        ("jobTemplate/entrypoint", f"{night} --set output.path=s3://b/captions/latest"),
    ):
        body = copy.deepcopy(cron.body)
        set_path(body["spec"], path, value)
        assert cron_problems(body), (path, value)


def test_shm_check_catches_disk_backed_or_oversized_shm(configmaps):
    spec, _ = _adhoc(configmaps)
    pod = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    dshm["emptyDir"]["sizeLimit"] = "10Ti"
    assert shm_problems(spec)
    dshm["emptyDir"]["sizeLimit"] = "1Gi"
    assert any("/tmp" in p for p in shm_problems(spec))
    dshm["emptyDir"] = {}
    assert shm_problems(spec)
    pod["containers"][0]["volumeMounts"] = [
        m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] != "/dev/shm"
    ]
    assert shm_problems(spec)


def test_quantities():
    assert quantity("16Gi") == 16 * 2**30 and quantity("500m") == 0.5 and quantity(4) == 4.0
    assert quantity("1e3") == 1000 and quantity("2G") == 2e9
    with pytest.raises(ValueError):
        quantity("16GB")
