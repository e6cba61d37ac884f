"""Checks of how a job's Ray cluster behaves on real GPU node pools; each returns a list of problems.

- head: no GPUs, ever (num-gpus "0", the NVIDIA runtime exposes none, no GPU toleration), and
  never on a spot node nor moved by an autoscaler (it holds the driver);
- weights: read in place from a shared volume (default), or an opt-in node cache on a hostPath
  the node's bootstrap made (no root container), not in a pod's own disk;
- placement: GPU pods only on the node types the sizing was checked for, packed per node,
  allowed onto spot GPU pools;
- fail fast: validate before any GPU pod (GPU groups start at 0), HTTPMode, no fresh-cluster retry;
- network: the dashboard reachable only by the cluster's pods and the KubeRay operator, the
  metrics port by Prometheus; egress only to DNS, the cluster and HTTPS, never the metadata endpoint.
"""

from __future__ import annotations

import posixpath

from internvl_batch.config import JobConfig
from internvl_batch.engines.model_path import CACHE_ENV, is_hub_name
from tests.k8s.entrypoint_run import ENTRYPOINT_COMMAND
from tests.k8s.manifests import gpus, head_pod, pod_specs, static_argv

DASHBOARD_PORT = 8265
METRICS_PORT = 8080
OPERATOR_LABEL = ("app.kubernetes.io/component", "kuberay-operator")  # set by the KubeRay Helm chart
PROMETHEUS_LABEL = ("app.kubernetes.io/name", "prometheus")  # kube-prometheus-stack's Prometheus pods
CACHE_GIB_ANNOTATION = "internvl-batch/model-cache-gib"
# Node labels that mark spot / preemptible capacity (Karpenter, EKS managed node groups, GKE, AKS).
SPOT_LABELS = {"karpenter.sh/capacity-type": "spot", "eks.amazonaws.com/capacityType": "SPOT",
               "cloud.google.com/gke-spot": "true", "cloud.google.com/gke-preemptible": "true",
               "kubernetes.azure.com/scalesetpriority": "spot"}  # fmt: skip
SPOT_TAINTS = {("cloud.google.com/gke-spot", "true"), ("kubernetes.azure.com/scalesetpriority", "spot")}
METADATA_IP = "169.254.169.254"


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
    terms = (((pod.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [{}]  # fmt: skip
    for term in terms:
        refused = {(e["key"], v) for e in term.get("matchExpressions", []) if e.get("operator") == "NotIn" for v in e.get("values", [])}  # fmt: skip
        missing = sorted(k for k, v in SPOT_LABELS.items() if (k, v) not in refused)
        if missing:
            problems.append(f"the head may land on a spot node (no NotIn for {missing}): a reclaimed VM ends the run")
    notes = ((spec["rayClusterSpec"]["headGroupSpec"]["template"].get("metadata") or {}).get("annotations")) or {}
    if (
        notes.get("karpenter.sh/do-not-disrupt") != "true"
        or notes.get("cluster-autoscaler.kubernetes.io/safe-to-evict") != "false"
    ):
        problems.append("head: annotate karpenter.sh/do-not-disrupt: 'true' and safe-to-evict: 'false' (consolidation)")
    return problems


def placement_problems(spec: dict, node_types: list[str]) -> list[str]:
    """GPU pods: only on the node types the sizing is checked for, packed onto few nodes, spot pools allowed."""
    problems = []
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        pod = g["template"]["spec"]
        if not gpus(pod["containers"][0]):
            continue
        name, aff = g["groupName"], pod.get("affinity") or {}
        terms = ((aff.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []  # fmt: skip
        types = [set(e.get("values", [])) for t in terms for e in t.get("matchExpressions", [])
                 if e.get("key") == "node.kubernetes.io/instance-type" and e.get("operator") == "In"]  # fmt: skip
        if len(types) != len(terms) or not types or set().union(*types) != set(node_types):
            problems.append(
                f"{name}: require node.kubernetes.io/instance-type In the sized node types {sorted(node_types)}: "
                f"an autoscaler could otherwise spread the pods over small GPU instances"
            )
        labels = g["template"]["metadata"].get("labels") or {}
        packed = [
            t["podAffinityTerm"]
            for t in (aff.get("podAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
            if t.get("podAffinityTerm", {}).get("topologyKey") == "kubernetes.io/hostname"
        ]
        selects = [((t.get("labelSelector") or {}).get("matchLabels") or {}) for t in packed]
        if not any(sel.get("ray.io/group") == name and sel.get("app.kubernetes.io/instance") == labels.get("app.kubernetes.io/instance") for sel in selects):  # fmt: skip
            problems.append(
                f"{name}: prefer co-locating the group's pods on one node (podAffinity on kubernetes.io/hostname)"
            )
        tolerated = {(t.get("key"), t.get("value")) for t in pod.get("tolerations", [])}
        if ("nvidia.com/gpu", None) not in tolerated:
            problems.append(f"{name}: tolerate nvidia.com/gpu (GPU node pools are tainted)")
        if not tolerated >= SPOT_TAINTS:
            problems.append(f"{name}: tolerate the spot taints {sorted(SPOT_TAINTS)} (spot GPU pools are an option)")
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


def model_cache_problems(spec: dict, cfg: JobConfig, claims: dict[str, dict] | None = None) -> list[str]:
    """Every GPU pod reads the checkpoint from a volume shared by the cluster (a PVC, mounted read-only,
    that `claims` holds as ReadWriteMany) or, opt-in, a node cache on a hostPath the node made
    (type Directory: no root container to create or chown it) whose size the node-fit check knows;
    never once per pod into its own disk; and the hub setting fits model.path."""
    problems = []
    for where, pod in pod_specs(spec):
        for c in pod.get("initContainers", []):
            if ((c.get("securityContext") or {}).get("runAsUser")) == 0:
                problems.append(f"{where}: init container {c['name']} runs as root")
    hub = is_hub_name(cfg.model.path)
    head_env = _env(head_pod(spec)["containers"][0])
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        pod = g["template"]["spec"]
        ray = pod["containers"][0]
        if not gpus(ray):
            continue
        name, env, mounts = g["groupName"], _env(ray), _mounts(pod, ray)
        offline = env.get("HF_HUB_OFFLINE", {}).get("value") == "1"
        if hub and (offline or head_env.get("HF_HUB_OFFLINE", {}).get("value") == "1"):
            problems.append(f"model.path {cfg.model.path} is a hub name but HF_HUB_OFFLINE=1: nothing could load it")
        if not hub and not offline:
            problems.append(f"{name}: model.path is not on the hub: set HF_HUB_OFFLINE=1 so nothing depends on it")
        cache = cfg.model.download_dir or env.get(CACHE_ENV, {}).get("value")
        if not hub and "://" not in cfg.model.path:
            where = _volume_of(posixpath.normpath(cfg.model.path), mounts)
            if where is None or "persistentVolumeClaim" not in where[1]:
                problems.append(f"{name}: the local model.path {cfg.model.path} must be on a mounted PVC")
                continue
            claim = where[1]["persistentVolumeClaim"]
            mount = next(m for m in ray.get("volumeMounts", []) if posixpath.normpath(m["mountPath"]) == where[0])
            if not (claim.get("readOnly") or mount.get("readOnly")):
                problems.append(f"{name}: mount the models volume read-only (one writer: the mirror Job)")
            modes = ((claims or {}).get(claim.get("claimName")) or {}).get("accessModes", [])
            if claims is not None and not {"ReadWriteMany", "ReadOnlyMany"} & set(modes):
                problems.append(
                    f"{name}: PVC {claim.get('claimName')} must be a k8s/ claim with ReadWriteMany (shared by nodes)"
                )
            head_mounts = _mounts(head_pod(spec), head_pod(spec)["containers"][0])
            if _volume_of(posixpath.normpath(cfg.model.path), head_mounts) is None:
                problems.append(f"the head must mount the models volume too: validate reads {cfg.model.path}")
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
            elif kind == "hostPath":
                if where[1]["hostPath"].get("type") != "Directory":
                    problems.append(
                        f"{name}: the model-cache hostPath must be type Directory, made by the node's bootstrap for "
                        f"uid 1000 (DirectoryOrCreate makes it root's: a root container would have to chown it)"
                    )
                notes = (g["template"].get("metadata") or {}).get("annotations") or {}
                if what == "model cache" and not str(notes.get(CACHE_GIB_ANNOTATION, "")).isdigit():
                    problems.append(
                        f"{name}: annotate {CACHE_GIB_ANNOTATION} (GiB) so the node-fit check counts the cache"
                    )
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
    """Some NetworkPolicy selects pods with `pod_labels` and lets in only same-app pods, the KubeRay
    operator on the dashboard port only and Prometheus on the metrics port only."""
    selecting = [
        p for p in policies if _selects(p, pod_labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return [f"no NetworkPolicy in k8s/ limits ingress to the Ray pods (labels {pod_labels})"]
    problems = []
    for p in selecting:
        spec, name = p["spec"], p["metadata"]["name"]
        for rule in spec.get("ingress", []):
            ports = {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports", [])}
            for peer in rule.get("from", []) or [{}]:
                if "ipBlock" in peer:
                    problems.append(f"{name}: an ipBlock peer may reach the Ray pods")
                    continue
                ns, pods = peer.get("namespaceSelector"), (peer.get("podSelector") or {}).get("matchLabels", {})
                same_app = ns is None and pods and set(pods.items()) <= set(pod_labels.items())
                operator = OPERATOR_LABEL in pods.items() and ports == {("TCP", DASHBOARD_PORT)}
                prometheus = PROMETHEUS_LABEL in pods.items() and ports == {("TCP", METRICS_PORT)}
                if not (same_app or operator or prometheus):
                    problems.append(f"{name}: ingress from {peer or 'anywhere'} on {sorted(ports) or 'all ports'}")
    return problems


def _selects(policy: dict, labels: dict[str, str]) -> bool:
    sel = policy["spec"].get("podSelector") or {}
    return set((sel.get("matchLabels") or {}).items()) <= set(labels.items()) and not sel.get("matchExpressions")


def egress_problems(policies: list[dict], pod_labels: dict[str, str]) -> list[str]:
    """Egress of pods with `pod_labels` is limited: DNS, the cluster's own pods, TCP 443/6443 outside
    the link-local range (object storage, STS, the API server); the metadata endpoint unreachable."""
    egress = [p for p in policies if _selects(p, pod_labels) and "Egress" in p["spec"].get("policyTypes", [])]
    if not egress:
        return [f"no NetworkPolicy limits the egress of pods labelled {pod_labels}"]
    problems, dns = [], False
    for p in egress:
        name = p["metadata"]["name"]
        for rule in p["spec"].get("egress", []):
            ports = {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports", [])}
            peers = rule.get("to") or [{}]
            for peer in peers:
                if "ipBlock" in peer:
                    block = peer["ipBlock"]
                    if not ports or ports - {("TCP", 443), ("TCP", 6443)}:
                        problems.append(f"{name}: ipBlock {block['cidr']} on {sorted(map(str, ports)) or 'all ports'}")
                    if _covers(block, METADATA_IP):
                        problems.append(f"{name}: {block['cidr']} lets pods reach the metadata endpoint {METADATA_IP}")
                elif (peer.get("podSelector") or {}).get("matchLabels") == {"k8s-app": "kube-dns"}:
                    dns = ports == {("UDP", 53), ("TCP", 53)} or dns
                    if ports - {("UDP", 53), ("TCP", 53)}:
                        problems.append(f"{name}: the DNS peer on {sorted(map(str, ports))}")
                elif peer.get("namespaceSelector") is None and (peer.get("podSelector") or {}).get("matchLabels"):
                    continue  # pods of this namespace with the given labels (the Ray cluster)
                else:
                    problems.append(f"{name}: egress to {peer or 'anywhere'}")
    if not dns:
        problems.append("egress: allow DNS (kube-dns, UDP and TCP 53)")
    return problems


def _covers(block: dict, ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    if addr not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(addr in ipaddress.ip_network(x) for x in block.get("except", []))
