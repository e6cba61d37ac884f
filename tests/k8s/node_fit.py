"""Do a job's GPU pods fit the 8-GPU nodes people rent? The node types, what the system keeps of them,
and the arithmetic (the "Pod sizing" table in k8s/README.md lists the same node types)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.k8s.manifests import gpus, quantity, resource

GIB = 2**30


@dataclass(frozen=True)
class NodeType:
    name: str  # the cloud's instance / machine type
    gpu: str
    gpus: int
    vcpus: int
    memory_gib: float
    nvme_gb: int  # local NVMe that comes with the type (0: none unless added), where an opt-in node cache lives


# vCPUs and memory as the clouds publish them (GCP's "GB" are GiB); local NVMe as published,
# rounded down (a2-highgpu-8g has none unless local SSDs are added to the node pool).
NODE_TYPES = (
    NodeType("p4d.24xlarge", "A100 40GB", 8, 96, 1152, 8000),
    NodeType("p4de.24xlarge", "A100 80GB", 8, 96, 1152, 8000),
    NodeType("p5.48xlarge", "H100 80GB", 8, 192, 2048, 30000),
    NodeType("p5e.48xlarge", "H200 141GB", 8, 192, 2048, 30000),
    NodeType("a2-highgpu-8g", "A100 40GB", 8, 96, 680, 0),
    NodeType("a2-ultragpu-8g", "A100 80GB", 8, 96, 1360, 3000),
    NodeType("a3-highgpu-8g", "H100 80GB", 8, 208, 1872, 6000),
    NodeType("a3-ultragpu-8g", "H200 141GB", 8, 224, 2952, 12000),
    NodeType("Standard_ND96asr_v4", "A100 40GB", 8, 96, 900, 6000),
    NodeType("Standard_ND96amsr_A100_v4", "A100 80GB", 8, 96, 1900, 6000),
    NodeType("Standard_ND96isr_H100_v5", "H100 80GB", 8, 96, 1900, 28000),
    NodeType("Standard_ND96isr_H200_v5", "H200 141GB", 8, 96, 1850, 28000),
)
# Where node images mount local NVMe: EKS (instance store as RAID0), GKE (local SSD as ephemeral
# storage), a mount an AKS node bootstrap makes. A cache hostPath elsewhere is on the boot disk.
NVME_MOUNTS = ("/mnt/k8s-disks/", "/mnt/stateful_partition/kube-ephemeral-ssd/", "/mnt/nvme/")
CACHE_GIB_ANNOTATION = "internvl-batch/model-cache-gib"

# What a node keeps for itself beyond the kubelet's reservations: DaemonSets such as the NVIDIA
# device plugin, DCGM exporter, GPU feature discovery, CNI, kube-proxy, log and metrics agents.
DAEMONSETS_CPU = 6.0
DAEMONSETS_MEMORY_GIB = 16.0
EVICTION_MEMORY_GIB = 0.1  # the kubelet's default memory.available hard-eviction threshold

# Pods' ephemeral storage on a 100 GB boot disk, the smallest common GPU node pool default:
# 10% kept free by the kubelet's nodefs eviction threshold, ~10 GB for the OS and ~30 GB for
# images (this image is ~20 GB; the system's add the rest). The weights are not in here: by
# default on a shared volume; the opt-in node cache counts against the node's NVMe.
BOOT_DISK_GIB = 100
POD_EPHEMERAL_BUDGET_GIB = BOOT_DISK_GIB * 0.9 - 10 - 30


def _tiered(total: float, tiers: list[tuple[float, float]], rest: float) -> float:
    """sum of rate x amount over consecutive tiers of `total`, then `rest` x what is left."""
    reserved, left = 0.0, total
    for size, rate in tiers:
        used = min(left, size)
        reserved, left = reserved + used * rate, left - used
    return reserved + left * rest


def reserved_cpu(node: NodeType) -> float:
    """Kubelet CPU reservation (GKE's published tiers; EKS and AKS reserve about as much) plus DaemonSets."""
    return _tiered(node.vcpus, [(1, 0.06), (1, 0.01), (2, 0.005)], 0.0025) + DAEMONSETS_CPU


def reserved_memory_gib(node: NodeType) -> float:
    """Kubelet memory reservation (GKE's tiers: the largest of the three clouds' at these sizes),
    the eviction threshold and DaemonSets."""
    kubelet = _tiered(node.memory_gib, [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06)], 0.02)
    return kubelet + EVICTION_MEMORY_GIB + DAEMONSETS_MEMORY_GIB


@dataclass
class GroupFit:
    group: str
    pods_per_node: int
    cpu: float
    memory_gib: float
    ephemeral_gib: float


def group_fits(spec: dict, node: NodeType) -> tuple[list[GroupFit], list[str]]:
    """Per GPU worker group: what one node's worth of its pods requests, and what does not fit `node`."""
    fits, problems = [], []
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        ray = g["template"]["spec"]["containers"][0]
        per_pod = gpus(ray)
        if not per_pod:
            continue
        name = g["groupName"]
        if node.gpus % per_pod:
            problems.append(f"{name}: {per_pod:g} GPUs per pod leave GPUs of an {node.gpus}-GPU {node.name} idle")
            continue
        n = int(node.gpus // per_pod)
        init = g["template"]["spec"].get("initContainers", [])

        def request(res: str, scale: float = 1.0, ray=ray, init=init) -> float:
            # A pod's request: the sum of its containers', or its largest init container's if larger.
            main = quantity(resource(ray, "requests", res, 0)) / scale
            return max([main, *(quantity(resource(c, "requests", res, 0)) / scale for c in init)])

        # /dev/shm pages are charged to the pod's memory: a request below them under-reserves the node.
        shm = _shm_gib(g["template"]["spec"], ray)
        if request("memory", GIB) < shm:
            problems.append(
                f"{name}: memory request {request('memory', GIB):g} GiB is below /dev/shm {shm:g} GiB, which it counts"
            )
        memory = max(request("memory", GIB), shm)
        fit = GroupFit(name, n, n * request("cpu"), n * memory, n * request("ephemeral-storage", GIB))
        problems += _cache_problems(g, node)
        fits.append(fit)
        cpu_room = node.vcpus - reserved_cpu(node)
        mem_room = node.memory_gib - reserved_memory_gib(node)
        if fit.cpu > cpu_room:
            problems.append(f"{name}: {n} pods request {fit.cpu:g} CPU; a {node.name} has {cpu_room:.1f} for pods")
        if fit.memory_gib > mem_room:
            problems.append(
                f"{name}: {n} pods request {fit.memory_gib:g} GiB; a {node.name} has {mem_room:.0f} GiB for pods"
            )
        if fit.ephemeral_gib > POD_EPHEMERAL_BUDGET_GIB:
            problems.append(
                f"{name}: {n} pods request {fit.ephemeral_gib:g} GiB of ephemeral storage; a {BOOT_DISK_GIB} GB "
                f"boot disk leaves pods about {POD_EPHEMERAL_BUDGET_GIB:.0f} GiB"
            )
        if not resource(ray, "requests", "ephemeral-storage"):
            problems.append(f"{name}: request ephemeral-storage, so the scheduler counts the disk pods use")
    return fits, problems


def _shm_gib(pod: dict, ray: dict) -> float:
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in ray.get("volumeMounts", []):
        ed = (vols.get(m["name"]) or {}).get("emptyDir") or {}
        if m["mountPath"].rstrip("/") == "/dev/shm" and ed.get("medium") == "Memory":
            return quantity(ed.get("sizeLimit", 0)) / GIB
    return 0.0


def _cache_problems(group: dict, node: NodeType) -> list[str]:
    """An opt-in node cache (a hostPath; its size in an annotation) fits the node's local NVMe, never the boot disk."""
    pod = group["template"]["spec"]
    host = [v["hostPath"]["path"] for v in pod.get("volumes", []) if "hostPath" in v]
    if not host:
        return []
    name = group["groupName"]
    size = (group["template"].get("metadata") or {}).get("annotations", {}).get(CACHE_GIB_ANNOTATION)
    if size is None:
        return [f"{name}: a hostPath cache without {CACHE_GIB_ANNOTATION}: its size can't be counted"]
    problems = []
    for path in host:
        if not path.rstrip("/").startswith(NVME_MOUNTS) and not any(
            path.startswith(m.rstrip("/")) for m in NVME_MOUNTS
        ):
            problems.append(
                f"{name}: the cache {path} is on the boot disk, which the kubelet does not count: "
                f"{size} GiB there leads to DiskPressure evictions; put it under {NVME_MOUNTS}"
            )
        elif float(size) * GIB > node.nvme_gb * 1e9 * 0.9:
            problems.append(f"{name}: a {size} GiB cache does not fit a {node.name}'s local NVMe ({node.nvme_gb} GB)")
    return problems
