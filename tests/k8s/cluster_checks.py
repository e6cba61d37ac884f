"""Checks of how a job's Ray cluster behaves on real GPU node pools; each returns a list of problems.

- head: no GPUs, ever (num-gpus "0", the NVIDIA runtime exposes none, no GPU toleration);
- model cache: on a node-local or shared volume the whole node reuses, not in a pod's own disk;
- fail fast: validate before any GPU pod (GPU groups start at 0), HTTPMode, no fresh-cluster retry;
- network: the dashboard reachable only by the cluster's pods and the KubeRay operator.
"""

from __future__ import annotations

import posixpath

from internvl_batch.config import JobConfig
from internvl_batch.engines.model_path import CACHE_ENV, is_hub_name
from tests.k8s.entrypoint_run import ENTRYPOINT_COMMAND
from tests.k8s.manifests import gpus, head_pod, static_argv

DASHBOARD_PORT = 8265
OPERATOR_LABEL = ("app.kubernetes.io/component", "kuberay-operator")  # set by the KubeRay Helm chart


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def head_problems(spec: dict) -> list[str]:
    problems = []
    params = spec["rayClusterSpec"]["headGroupSpec"].get("rayStartParams") or {}
    if str(params.get("num-gpus")) != "0":
        problems.append('head rayStartParams needs num-gpus: "0": Ray would count GPUs it detects on the node')
    pod = head_pod(spec)
    ray = pod["containers"][0]
    if _env(ray).get("NVIDIA_VISIBLE_DEVICES", {}).get("value") != "void":
        problems.append("head: set NVIDIA_VISIBLE_DEVICES=void; the CUDA image's `all` exposes the GPUs of other pods")
    if gpus(ray) or gpus(ray, "requests"):
        problems.append("the head requests GPUs")
    for t in pod.get("tolerations", []):
        if t.get("key") == "nvidia.com/gpu" or t.get("operator") == "Exists" and not t.get("key"):
            problems.append("the head tolerates the GPU taint: it could take a GPU node's CPUs and memory")
    return problems


def _mounts(pod: dict, container: dict) -> dict[str, dict]:
    """mount path -> volume, for one container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {posixpath.normpath(m["mountPath"]): volumes.get(m["name"], {}) for m in container.get("volumeMounts", [])}


def _volume_of(path: str, mounts: dict[str, dict]) -> tuple[str, dict] | None:
    for mount in sorted(mounts, key=len, reverse=True):
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return mount, mounts[mount]
    return None


def model_cache_problems(spec: dict, cfg: JobConfig) -> list[str]:
    """Every GPU pod keeps the checkpoint on a volume shared by the node (hostPath) or the cluster
    (a PVC): fetched once per node, not once per pod into its own disk; and the hub setting fits model.path."""
    problems = []
    hub = is_hub_name(cfg.model.path)
    head_env = _env(head_pod(spec)["containers"][0])
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        pod = g["template"]["spec"]
        ray = pod["containers"][0]
        if not gpus(ray):
            continue
        name, env, mounts = g["groupName"], _env(ray), _mounts(pod, ray)
        cache = cfg.model.download_dir or env.get(CACHE_ENV, {}).get("value")
        if not hub and "://" not in cfg.model.path:
            where = _volume_of(posixpath.normpath(cfg.model.path), mounts)
            if where is None or "persistentVolumeClaim" not in where[1]:
                problems.append(f"{name}: the local model.path {cfg.model.path} must be on a mounted PVC")
            continue
        if not cache:
            problems.append(f"{name}: set {CACHE_ENV} (or model.download_dir) to the node's model cache")
            continue
        for what, path in (("model cache", cache), ("HF_HOME", env.get("HF_HOME", {}).get("value", "~/.cache"))):
            where = _volume_of(posixpath.normpath(path), mounts)
            kind = next((k for k in ("hostPath", "persistentVolumeClaim") if where and k in where[1]), None)
            if kind is None:
                problems.append(
                    f"{name}: the {what} ({path}) must be on a hostPath or PVC volume, not in the pod's own "
                    f"disk: every pod would fetch the checkpoint again"
                )
            elif kind == "hostPath" and where[1]["hostPath"].get("type") not in ("DirectoryOrCreate", "Directory"):
                problems.append(f"{name}: the model-cache hostPath needs type DirectoryOrCreate (or Directory)")
        offline = env.get("HF_HUB_OFFLINE", {}).get("value") == "1"
        if hub and (offline or head_env.get("HF_HUB_OFFLINE", {}).get("value") == "1"):
            problems.append(f"model.path {cfg.model.path} is a hub name but HF_HUB_OFFLINE=1: nothing could load it")
        if not hub and not offline:
            problems.append(f"{name}: model.path is not on the hub: set HF_HUB_OFFLINE=1 so nothing depends on it")
    return problems


def fail_fast_problems(spec: dict) -> list[str]:
    problems = []
    argv = static_argv(spec.get("entrypoint", ""))
    if not argv or argv[0] != ENTRYPOINT_COMMAND:
        problems.append(f"the entrypoint must be {ENTRYPOINT_COMMAND} (it validates before it runs)")
    if spec.get("submissionMode") != "HTTPMode":
        problems.append(
            "submissionMode must be HTTPMode: in K8sJobMode a dropped log stream of the submitter can end "
            "a healthy job (kuberay #4921)"
        )
    if spec.get("backoffLimit", 0) != 0:
        problems.append(
            "backoffLimit must be 0: KubeRay retries on a fresh cluster whatever failed, and a problem that "
            "will repeat fails again; internvl-rayjob retries the others on this cluster"
        )
    if not spec.get("preRunningDeadlineSeconds"):
        problems.append("set preRunningDeadlineSeconds: a head that never starts must fail the job, not hang it")
    cluster = spec["rayClusterSpec"]
    if not cluster.get("enableInTreeAutoscaling"):
        problems.append("enableInTreeAutoscaling must be on: GPU pods come only when the validated job asks")
    for g in cluster.get("workerGroupSpecs", []):
        if gpus(g["template"]["spec"]["containers"][0]) and (g.get("replicas", 0) or g.get("minReplicas", 0)):
            problems.append(
                f"{g['groupName']}: replicas and minReplicas must be 0, so no GPU pod starts before the job validated"
            )
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        problems.append("rayClusterSpec.authOptions.mode must be token: the dashboard runs submitted code")
    return problems


def network_policy_problems(policies: list[dict], pod_labels: dict[str, str]) -> list[str]:
    """Some NetworkPolicy selects pods with `pod_labels` and lets in only same-app pods and, on the
    dashboard port only, the KubeRay operator."""
    selecting = [
        p
        for p in policies
        if set((p["spec"].get("podSelector") or {}).get("matchLabels", {}).items()) <= set(pod_labels.items())
        and not (p["spec"].get("podSelector") or {}).get("matchExpressions")
    ]
    if not selecting:
        return [f"no NetworkPolicy in k8s/ selects the Ray pods (labels {pod_labels})"]
    problems = []
    for p in selecting:
        spec, name = p["spec"], p["metadata"]["name"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            problems.append(f"{name}: policyTypes must include Ingress")
        for rule in spec.get("ingress", []):
            ports = {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports", [])}
            for peer in rule.get("from", []) or [{}]:
                if "ipBlock" in peer:
                    problems.append(f"{name}: an ipBlock peer may reach the Ray pods")
                    continue
                ns, pods = peer.get("namespaceSelector"), (peer.get("podSelector") or {}).get("matchLabels", {})
                same_app = ns is None and pods and set(pods.items()) <= set(pod_labels.items())
                operator = OPERATOR_LABEL in pods.items() and ports == {("TCP", DASHBOARD_PORT)}
                if not (same_app or operator):
                    problems.append(f"{name}: ingress from {peer or 'anywhere'} on {sorted(ports) or 'all ports'}")
    return problems
