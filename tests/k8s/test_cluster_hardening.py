"""The clusters behave on real GPU node pools: the head takes no GPU, the weights sit in a node-wide
cache, nothing GPU starts before the job validated, the dashboard is off the network; and each
check catches the manifest that breaks it."""

from __future__ import annotations

import copy

import pytest
import yaml

from internvl_batch.config import JobConfig
from tests.k8s.cluster_checks import (
    OPERATOR_LABEL,
    fail_fast_problems,
    head_problems,
    model_cache_problems,
    network_policy_problems,
)
from tests.k8s.manifests import docs_of, ids, job_specs, mounted_job_config, set_path

WORKER = "rayClusterSpec/workerGroupSpecs/0"
WORKER_POD = f"{WORKER}/template/spec"
HEAD_POD = "rayClusterSpec/headGroupSpec/template/spec"


def _config(spec: dict, configmaps: dict) -> JobConfig:
    return JobConfig.model_validate(yaml.safe_load(mounted_job_config(spec, configmaps)))


def _policies() -> list[dict]:
    return [d.body for d in docs_of("NetworkPolicy")]


def _env_index(container: dict, name: str) -> int:
    return next(i for i, e in enumerate(container["env"]) if e["name"] == name)


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_the_head_never_takes_a_gpu(item):
    assert head_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_weights_are_cached_once_per_node(item, configmaps):
    _, spec = item
    assert model_cache_problems(spec, _config(spec, configmaps)) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_nothing_gpu_starts_before_the_job_validated(item):
    assert fail_fast_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_the_ray_pods_are_off_the_network(item):
    _, spec = item
    cluster = spec["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for template in templates:
        assert network_policy_problems(_policies(), template["metadata"]["labels"]) == []


def test_the_mirror_job_writes_where_the_8b_configs_read(configmaps):
    (job,) = [d.body for d in docs_of("Job")]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["internvl-batch", "mirror-model"]
    source, dest = command[2:4]
    model = source.rsplit("/", 1)[-1]
    readers = {_config(spec, configmaps).model.path for _, spec in job_specs()}
    assert dest in readers, f"no job reads the mirror {dest}: {readers}"
    assert {r for r in readers if r.rstrip("/").endswith("/" + model)} == {dest}, "one mirror per model"
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert all("secretKeyRef" in env[k]["valueFrom"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


# == the checks catch what they should =====================================================


def _first_rayjob() -> dict:
    return copy.deepcopy(next(spec for doc, spec in job_specs() if doc.kind == "RayJob"))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{HEAD_POD.rsplit('/template', 1)[0]}/rayStartParams/num-gpus", KeyError, "num-gpus"),
        (f"{HEAD_POD}/tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists"}], "tolerates"),
        (f"{HEAD_POD}/tolerations", [{"operator": "Exists"}], "tolerates"),
    ],
)
def test_head_check_catches_a_head_that_could_get_gpus(path, value, expected):
    spec = _first_rayjob()
    set_path(spec, path, value)
    assert any(expected in p for p in head_problems(spec))


def test_head_check_wants_the_nvidia_runtime_to_expose_no_gpu():
    spec = _first_rayjob()
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    del head["env"][_env_index(head, "NVIDIA_VISIBLE_DEVICES")]
    assert any("NVIDIA_VISIBLE_DEVICES" in p for p in head_problems(spec))


def _worker_container(spec: dict) -> dict:
    return spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def test_cache_check_catches_per_pod_downloads_and_hub_mismatches(configmaps):
    spec = _first_rayjob()
    cfg = _config(spec, configmaps)
    assert model_cache_problems(spec, cfg) == []

    per_pod = copy.deepcopy(spec)
    volumes = per_pod["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    cache = next(v for v in volumes if v["name"] == "model-cache")
    del cache["hostPath"]
    cache["emptyDir"] = {}
    assert any("hostPath or PVC" in p for p in model_cache_problems(per_pod, cfg)), "an emptyDir is per pod"

    no_cache = copy.deepcopy(spec)
    worker = _worker_container(no_cache)
    del worker["env"][_env_index(worker, "INTERNVL_BATCH_MODEL_CACHE")]
    assert any("INTERNVL_BATCH_MODEL_CACHE" in p for p in model_cache_problems(no_cache, cfg))

    hub = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": "OpenGVLab/InternVL2_5-8B"})})
    assert any("HF_HUB_OFFLINE=1" in p for p in model_cache_problems(spec, hub)), "the hub, yet offline"

    online = copy.deepcopy(spec)
    worker = _worker_container(online)
    del worker["env"][_env_index(worker, "HF_HUB_OFFLINE")]
    assert any("HF_HUB_OFFLINE=1" in p for p in model_cache_problems(online, cfg)), "a mirror, yet online"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("submissionMode", "K8sJobMode", "HTTPMode"),
        ("backoffLimit", 2, "backoffLimit"),
        (f"{WORKER}/replicas", 8, "replicas"),
        (f"{WORKER}/minReplicas", 1, "replicas"),
        ("entrypoint", "python /app/jobs/run_job.py /etc/internvl-batch/job.yaml", "validates"),
        ("preRunningDeadlineSeconds", KeyError, "preRunningDeadlineSeconds"),
        ("rayClusterSpec/enableInTreeAutoscaling", False, "enableInTreeAutoscaling"),
        ("rayClusterSpec/authOptions", KeyError, "token"),
    ],
)
def test_fail_fast_check_catches_gpu_spend_before_validation(path, value, expected):
    spec = _first_rayjob()
    if path.endswith("/minReplicas"):
        set_path(spec, f"{WORKER}/replicas", 1)
    set_path(spec, path, value)
    assert any(expected in p for p in fail_fast_problems(spec)), fail_fast_problems(spec)


def test_network_policy_check_catches_open_doors():
    labels = {"app.kubernetes.io/name": "internvl-batch"}
    (policy,) = _policies()
    assert network_policy_problems([policy], labels) == []
    assert network_policy_problems([], labels), "no policy at all"
    assert network_policy_problems([policy], {"app.kubernetes.io/name": "other"}), "a pod the policy misses"
    for rule in (
        {},  # from anywhere, any port
        {"from": [{"namespaceSelector": {}}]},  # any pod of any namespace
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8265}]},
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict([OPERATOR_LABEL])}}]},  # all ports
    ):
        opened = copy.deepcopy(policy)
        opened["spec"]["ingress"].append(rule)
        assert network_policy_problems([opened], labels), rule


def test_cache_check_accepts_a_shared_pvc_for_a_local_model_path(configmaps):
    spec = _first_rayjob()
    cfg = _config(spec, configmaps)
    local = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": "/models/InternVL2_5-8B"})})
    assert any("PVC" in p for p in model_cache_problems(spec, local)), "a hostPath is not filled by anyone"
    volumes = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    cache = next(v for v in volumes if v["name"] == "model-cache")
    del cache["hostPath"]
    cache["persistentVolumeClaim"] = {"claimName": "internvl-models", "readOnly": True}
    assert model_cache_problems(spec, local) == []
