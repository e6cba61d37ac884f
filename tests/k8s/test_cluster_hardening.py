"""The clusters behave on real GPU node pools: the head takes no GPU and stays off spot nodes, the
weights are read from a shared volume (or an opt-in node cache), GPU pods land on the sized node
types, packed, nothing GPU starts before the job validated, the dashboard is off the network and
egress is limited; and each check catches the manifest that breaks it."""

from __future__ import annotations

import copy

import pytest
import yaml

from internvl_batch.config import JobConfig
from tests.k8s.cluster_checks import (
    CACHE_GIB_ANNOTATION,
    METADATA_IP,
    OPERATOR_LABEL,
    PROMETHEUS_LABEL,
    egress_problems,
    fail_fast_problems,
    head_problems,
    model_cache_problems,
    network_policy_problems,
    placement_problems,
)
from tests.k8s.manifests import docs_of, ids, is_opt_in, job_specs, mounted_job_config, set_path
from tests.k8s.node_fit import NODE_TYPES

WORKER = "rayClusterSpec/workerGroupSpecs/0"
WORKER_POD = f"{WORKER}/template/spec"
HEAD_POD = "rayClusterSpec/headGroupSpec/template/spec"


def _config(spec: dict, configmaps: dict) -> JobConfig:
    return JobConfig.model_validate(yaml.safe_load(mounted_job_config(spec, configmaps)))


def _policies(opt_in: bool = False) -> list[dict]:
    return [d.body for d in docs_of("NetworkPolicy") if opt_in or not is_opt_in(d)]


def _claims() -> dict[str, dict]:
    return {d.name: d.body["spec"] for d in docs_of("PersistentVolumeClaim")}


NODE_TYPE_NAMES = [n.name for n in NODE_TYPES]


def _env_index(container: dict, name: str) -> int:
    return next(i for i, e in enumerate(container["env"]) if e["name"] == name)


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_the_head_never_takes_a_gpu(item):
    assert head_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_weights_come_from_a_shared_volume_or_the_opt_in_node_cache(item, configmaps):
    doc, spec = item
    cfg = _config(spec, configmaps)
    assert model_cache_problems(spec, cfg, _claims()) == []
    assert ("://" in cfg.model.path) == is_opt_in(doc), "only the opt-in copies weights to a node cache"


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_gpu_pods_land_on_the_sized_node_types_packed(item):
    assert placement_problems(item[1], NODE_TYPE_NAMES) == []


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
        assert egress_problems(_policies(), template["metadata"]["labels"]) == []


def test_the_mirror_job_fills_the_volume_the_8b_configs_read(configmaps):
    (job,) = [d.body for d in docs_of("Job")]
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:2] == ["internvl-batch", "mirror-model"]
    source, dest = command[2:4]
    model = source.rsplit("/", 1)[-1]
    readers = {_config(spec, configmaps).model.path for doc, spec in job_specs() if not is_opt_in(doc)}
    assert dest in readers, f"no job reads the mirror {dest}: {readers}"
    assert {r for r in readers if r.rstrip("/").endswith("/" + model)} == {dest}, "one mirror per model"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"internvl-models"} and "internvl-models" in _claims()
    assert egress_problems(_policies(), job["spec"]["template"]["metadata"]["labels"]) == []


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


def _opt_in() -> dict:
    return copy.deepcopy(next(spec for doc, spec in job_specs() if is_opt_in(doc)))


def _with_model(cfg: JobConfig, path: str) -> JobConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": path})})


def test_volume_check_catches_a_per_pod_copy_a_writable_or_unshared_volume(configmaps):
    spec = _first_rayjob()
    cfg, claims = _config(spec, configmaps), _claims()
    assert model_cache_problems(spec, cfg, claims) == []
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]

    broken = copy.deepcopy(spec)
    models = next(
        v
        for v in broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
        if v["name"] == "models"
    )
    del models["persistentVolumeClaim"]
    models["emptyDir"] = {}
    assert any("on a mounted PVC" in p for p in model_cache_problems(broken, cfg, claims)), "an emptyDir is per pod"

    broken = copy.deepcopy(spec)
    pod = broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["readOnly"] = False
    next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")["readOnly"] = False
    assert any("read-only" in p for p in model_cache_problems(broken, cfg, claims))

    single_node = {"internvl-models": {**claims["internvl-models"], "accessModes": ["ReadWriteOnce"]}}
    assert any("ReadWriteMany" in p for p in model_cache_problems(spec, cfg, single_node))

    broken = copy.deepcopy(spec)
    head = broken["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["volumeMounts"] = [m for m in head["volumeMounts"] if m["name"] != "models"]
    assert any("head must mount" in p for p in model_cache_problems(broken, cfg, claims))
    assert any(
        "HF_HUB_OFFLINE=1" in p
        for p in model_cache_problems(spec, _with_model(cfg, "OpenGVLab/InternVL2_5-8B"), claims)
    )
    assert worker  # the default's worker pod spec was not touched by the cases above


def test_node_cache_check_catches_root_owned_unsized_or_per_pod_caches(configmaps):
    spec = _opt_in()
    cfg = _config(spec, configmaps)
    assert model_cache_problems(spec, cfg) == []
    group = lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0]  # noqa: E731

    broken = copy.deepcopy(spec)
    cache = next(v for v in group(broken)["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    cache["hostPath"]["type"] = "DirectoryOrCreate"
    assert any("type Directory" in p for p in model_cache_problems(broken, cfg))

    broken = copy.deepcopy(spec)
    del group(broken)["template"]["metadata"]["annotations"][CACHE_GIB_ANNOTATION]
    assert any(CACHE_GIB_ANNOTATION in p for p in model_cache_problems(broken, cfg))

    broken = copy.deepcopy(spec)
    group(broken)["template"]["spec"]["initContainers"] = [
        {
            "name": "chown",
            "image": "x",
            "securityContext": {"runAsUser": 0},
            "command": ["chown", "1000", "/model-cache"],
        }
    ]
    assert any("runs as root" in p for p in model_cache_problems(broken, cfg))

    broken = copy.deepcopy(spec)
    cache = next(v for v in group(broken)["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    del cache["hostPath"]
    cache["emptyDir"] = {}
    assert any("hostPath or PVC" in p for p in model_cache_problems(broken, cfg)), "an emptyDir is per pod"

    broken = copy.deepcopy(spec)
    worker = _worker_container(broken)
    del worker["env"][_env_index(worker, "INTERNVL_BATCH_MODEL_CACHE")]
    assert any("INTERNVL_BATCH_MODEL_CACHE" in p for p in model_cache_problems(broken, cfg))

    broken = copy.deepcopy(spec)
    worker = _worker_container(broken)
    del worker["env"][_env_index(worker, "HF_HUB_OFFLINE")]
    assert any("HF_HUB_OFFLINE=1" in p for p in model_cache_problems(broken, cfg)), "a mirror, yet online"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda pod, g: pod["affinity"].pop("nodeAffinity"), "instance-type"),
        (
            lambda pod, g: pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"][0]["values"].append("g5.xlarge"),
            "instance-type",
        ),  # fmt: skip
        (lambda pod, g: pod["affinity"].pop("podAffinity"), "co-locating"),
        (lambda pod, g: g.update(groupName="other"), "co-locating"),
        (lambda pod, g: pod["tolerations"].pop(0), "nvidia.com/gpu"),
        (lambda pod, g: pod.update(tolerations=pod["tolerations"][:1]), "spot taints"),
    ],
    ids=[
        "no node types",
        "a small GPU type too",
        "not packed",
        "packing another group",
        "no GPU toleration",
        "no spot toleration",
    ],  # fmt: skip
)
def test_placement_check_catches_scattered_or_stuck_gpu_pods(edit, expected):
    spec = _first_rayjob()
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    edit(group["template"]["spec"], group)
    assert any(expected in p for p in placement_problems(spec, NODE_TYPE_NAMES)), placement_problems(
        spec, NODE_TYPE_NAMES
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda head, meta: head["affinity"].pop("nodeAffinity"), "spot node"),
        (
            lambda head, meta: head["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"].pop(0),
            "karpenter.sh/capacity-type",
        ),  # fmt: skip
        (lambda head, meta: meta["annotations"].pop("karpenter.sh/do-not-disrupt"), "do-not-disrupt"),
        (
            lambda head, meta: meta["annotations"].update({"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}),
            "safe-to-evict",
        ),  # fmt: skip
    ],
)
def test_head_check_catches_a_head_a_spot_reclaim_or_consolidation_could_take(edit, expected):
    spec = _first_rayjob()
    template = spec["rayClusterSpec"]["headGroupSpec"]["template"]
    edit(template["spec"], template["metadata"])
    assert any(expected in p for p in head_problems(spec)), head_problems(spec)


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
    (policy,) = [p for p in _policies() if "Ingress" in p["spec"]["policyTypes"]]
    assert network_policy_problems([policy], labels) == []
    assert network_policy_problems([], labels), "no policy at all"
    assert network_policy_problems([policy], {"app.kubernetes.io/name": "other"}), "a pod the policy misses"
    for rule in (
        {},  # from anywhere, any port
        {"from": [{"namespaceSelector": {}}]},  # any pod of any namespace
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8265}]},
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict([OPERATOR_LABEL])}}]},  # all ports
        {
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict([PROMETHEUS_LABEL])}}],
            "ports": [{"port": 8265}],
        },  # fmt: skip
    ):
        opened = copy.deepcopy(policy)
        opened["spec"]["ingress"].append(rule)
        assert network_policy_problems([opened], labels), rule


def test_egress_check_catches_the_metadata_endpoint_and_open_egress():
    labels = {"app.kubernetes.io/part-of": "internvl-batch", "app.kubernetes.io/name": "internvl-batch"}
    policies = _policies()
    assert egress_problems(policies, labels) == []
    assert egress_problems([p for p in policies if "Egress" not in p["spec"]["policyTypes"]], labels)

    def broken(edit) -> list[str]:
        ps = copy.deepcopy(policies)
        egress = next(p for p in ps if "Egress" in p["spec"]["policyTypes"])
        edit(egress["spec"]["egress"])
        return egress_problems(ps, labels)

    assert any(METADATA_IP in p for p in broken(lambda rules: rules[2]["to"][0]["ipBlock"].pop("except")))
    assert any("all ports" in p or "80" in p for p in broken(lambda rules: rules[2].pop("ports")))
    assert any("80" in p for p in broken(lambda rules: rules[2]["ports"].append({"protocol": "TCP", "port": 80})))
    assert any("DNS" in p for p in broken(lambda rules: rules.pop(0)))
    assert any("egress to" in p for p in broken(lambda rules: rules.append({"to": [{"namespaceSelector": {}}]})))
    assert any(METADATA_IP in p for p in egress_problems(_policies(opt_in=True), labels)), (
        "the GKE opt-in opens exactly the metadata server: the default must not"
    )
