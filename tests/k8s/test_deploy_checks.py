"""What a schema can't check: the entrypoint is the image's and its config mounted and valid, GPUs
fit tensor_parallel_size, Ray versions match the pin, one pull policy fits the image reference,
credentials come from the workload identity (a Secret only as an opt-in), /dev/shm is memory-backed
and shared sensibly with Ray's object store, the nightly takes its night from the schedule, shares
a lease, cleans up and fits its time budget; and each check catches what it should."""

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
    pull_policy_problems,
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
    assert all(r.get("optional") is True for r in refs), "the Secret is an opt-in: pods start without it"
    (account,) = [d.body for d in docs_of("ServiceAccount")]
    notes = account["metadata"].get("annotations") or {}
    assert {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"} <= set(notes), "IRSA and GKE WI"
    readme = (K8S_DIR / "README.md").read_text()
    for name in names:
        assert f"kubectl create secret generic {name}" in readme, f"k8s/README.md must show how to create {name}"


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_one_pull_policy_that_fits_the_image_reference(item):
    assert pull_policy_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_job_lifecycle_is_bounded(item):
    doc, spec = item
    if doc.kind == "RayJob":
        assert spec.get("shutdownAfterJobFinishes") is True
        assert spec.get("ttlSecondsAfterFinished", 0) > 0
    else:  # deletion rules (cron_problems checks them)
        assert spec["deletionStrategy"]["deletionRules"] and not spec.get("shutdownAfterJobFinishes")
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


def _local_lease(entrypoint: str, tmp_path) -> str:
    """The entrypoint with its object-storage lease moved to a local file (no network here)."""
    return re.sub(r"--lease \S+", f"--lease {tmp_path}/lease.json", entrypoint)


@needs_shell
def test_nightly_entrypoint_reads_and_writes_the_night_before_its_tick(
    tmp_path, configmaps, validate_config, image_files
):
    (cron,) = docs_of("RayCronJob")
    spec = cron.body["spec"]["jobTemplate"]
    today = dt.datetime.now(dt.UTC).date()
    tick = {"INTERNVL_SCHEDULED_TIME": f"{today}T00:15:00Z"}  # what KubeRay writes on the RayJob
    ran = run_entrypoint(_local_lease(spec["entrypoint"], tmp_path), tmp_path, image_files, extra_env=tick)
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
    night = (today - dt.timedelta(days=1)).isoformat()
    assert cfg.output.path.rstrip("/").endswith(night) and f"/{night}/" in cfg.input.path + "/"
    assert cfg.input.path.startswith("s3://") and cfg.output.path.startswith("s3://")
    assert f"night {night} (UTC)" in ran.stdout


@needs_shell
@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_every_entrypoint_validates_then_runs_the_same_arguments(item, tmp_path, image_files):
    _, spec = item
    tick = {"INTERNVL_SCHEDULED_TIME": f"{dt.datetime.now(dt.UTC).date()}T00:15:00Z"}
    ran = run_entrypoint(_local_lease(spec["entrypoint"], tmp_path), tmp_path, image_files, extra_env=tick)
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
    assert image_problems(f"registry.example.com/ml/internvl-batch:0.1.0-ray{pin}@sha256:{'0' * 64}", pin) == []
    assert image_problems(f"registry.example.com/ml/internvl-batch:0.1.0-ray{pin}", pin) == []
    assert image_problems("rayproject/ray:2.59.0-py311-gpu", pin)
    assert image_problems("rayproject/ray-ml:latest-gpu", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0-ray2.59.0", pin)
    assert image_problems("registry.example.com:5000/ml/internvl-batch", pin)


NIGHTLY_SETS = "/c/job.yaml --set input.path=s3://b/m/{night}/ --set output.path=s3://b/c/{night}"
NIGHTLY_OK = f"internvl-rayjob --days-before-schedule 1 --catch-up 3 --manifest-wait 7200 --lease s3://b/c/_lease.json {NIGHTLY_SETS}"  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("jobTemplate/activeDeadlineSeconds", 86400, "overlap the next night"),
        ("jobTemplate/activeDeadlineSeconds", KeyError, "activeDeadlineSeconds"),
        ("jobTemplate/backoffLimit", 2, "overlap the next night"),
        ("schedule", "15 22 * * *", "overlap the next night"),
        ("schedule", "0 */6 * * *", "daily"),
        ("timeZone", "Etc/UTC", "v1.7.0"),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace("--days-before-schedule 1", "--days-ago 1"), "from the schedule"),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace("--catch-up 3", "--catch-up 0"), "--catch-up"),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace("--manifest-wait 7200 ", ""), "--manifest-wait"),
        (
            "jobTemplate/entrypoint",
            NIGHTLY_OK.replace("--manifest-wait 7200", "--manifest-wait 60000"),
            "--manifest-wait",
        ),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace(" --lease s3://b/c/_lease.json", ""), "--lease"),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace("c/_lease.json", "c/{night}/_lease.json"), "--lease"),
        ("jobTemplate/entrypoint", NIGHTLY_OK.replace("s3://b/c/_lease", "gs://b/c/_lease"), "output's store"),
        (
            "jobTemplate/entrypoint",
            NIGHTLY_OK.replace("output.path=s3://b/c/{night}", "output.path=s3://b/c/latest"),
            "{night}",
        ),  # fmt: skip
        (
            "jobTemplate/entrypoint",
            NIGHTLY_OK.replace("--days-before-schedule 1", "--days-before-schedule x"),
            "entrypoint",
        ),  # fmt: skip
        ("jobTemplate/deletionStrategy", KeyError, "GPUs"),
        ("jobTemplate/deletionStrategy/deletionRules/3", KeyError, "pile up"),
        ("jobTemplate/deletionStrategy/deletionRules/2", KeyError, "keep its GPUs"),
        ("jobTemplate/deletionStrategy/deletionRules/4/condition/ttlSeconds", 60, "1 day"),
    ],
)
def test_cron_check_catches_overlap_date_and_cleanup_risks(path, value, expected):
    (cron,) = docs_of("RayCronJob")
    body = copy.deepcopy(cron.body)
    assert cron_problems(body) == []
    set_path(body["spec"], "jobTemplate/entrypoint", NIGHTLY_OK)
    assert cron_problems(body) == [], "the reference line passes"
    set_path(body["spec"], path, value)
    problems = cron_problems(body)
    assert any(expected in p for p in problems), (path, value, problems)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda g, pod, dshm: dshm["emptyDir"].update(sizeLimit="10Ti"), "memory limit"),
        (lambda g, pod, dshm: dshm["emptyDir"].update(sizeLimit="40Gi"), "leaves the processes"),
        (lambda g, pod, dshm: dshm.update(emptyDir={}), "medium: Memory"),
        (
            lambda g, pod, dshm: pod["containers"][0].update(
                volumeMounts=[m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] != "/dev/shm"]
            ),
            "medium: Memory",
        ),  # fmt: skip
        (lambda g, pod, dshm: g["rayStartParams"].pop("object-store-memory"), "object-store-memory"),
        (lambda g, pod, dshm: g["rayStartParams"].update({"object-store-memory": str(18 * 2**30)}), "to vLLM / NCCL"),
        (lambda g, pod, dshm: g["rayStartParams"].pop("object-spilling-directory"), "object-spilling-directory"),
        (
            lambda g, pod, dshm: next(v for v in pod["volumes"] if v["name"] == "ray-spill")["emptyDir"].pop(
                "sizeLimit"
            ),
            "sizeLimit",
        ),  # fmt: skip
        (
            lambda g, pod, dshm: next(v for v in pod["volumes"] if v["name"] == "ray-spill")["emptyDir"].update(
                sizeLimit="60Gi"
            ),
            "ephemeral-storage request",
        ),  # fmt: skip
    ],
    ids=[
        "shm over the limit",
        "shm leaves no process memory",
        "disk-backed",
        "not mounted",
        "default object store",
        "object store fills shm",
        "no spill dir",
        "unbounded spill",
        "spill beyond the request",
    ],  # fmt: skip
)
def test_shm_check_catches_disk_backed_oversized_or_crowded_shm(configmaps, edit, expected):
    spec, _ = _adhoc(configmaps)
    assert shm_problems(spec) == []
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    pod = group["template"]["spec"]
    edit(group, pod, next(v for v in pod["volumes"] if v["name"] == "dshm"))
    assert any(expected in p for p in shm_problems(spec)), shm_problems(spec)


def test_pull_policy_and_identity_checks_catch_stale_images_and_mandatory_secrets(configmaps):
    spec, _ = _adhoc(configmaps)
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    ray = head["containers"][0]
    ray["imagePullPolicy"] = "IfNotPresent"
    assert any("a tag is mutable" in p for p in pull_policy_problems(spec)), "a cached tag goes stale"
    ray["image"] += "@sha256:" + "a" * 64
    assert any("disagree" in p for p in pull_policy_problems(spec)), "pinned here, a tag elsewhere"
    for c in (g["template"]["spec"]["containers"][0] for g in spec["rayClusterSpec"]["workerGroupSpecs"]):
        c.update(image=ray["image"], imagePullPolicy="IfNotPresent")
    spec["rayClusterSpec"]["autoscalerOptions"]["imagePullPolicy"] = "IfNotPresent"
    assert pull_policy_problems(spec) == [], "all pinned by digest: IfNotPresent is right"
    spec["rayClusterSpec"]["autoscalerOptions"]["imagePullPolicy"] = "Never"
    assert any("autoscalerOptions" in p for p in pull_policy_problems(spec))

    spec, _ = _adhoc(configmaps)
    assert secret_problems(spec) == []
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"].pop("optional")
    assert any("optional: true" in p for p in secret_problems(spec)), "a missing Secret would keep pods from starting"
    spec, _ = _adhoc(configmaps)
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"].pop("serviceAccountName")
    assert any("serviceAccountName" in p for p in secret_problems(spec))


def test_quantities():
    assert quantity("16Gi") == 16 * 2**30 and quantity("500m") == 0.5 and quantity(4) == 4.0
    assert quantity("1e3") == 1000 and quantity("2G") == 2e9
    with pytest.raises(ValueError):
        quantity("16GB")
