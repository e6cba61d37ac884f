"""Every GPU worker group fits the 8-GPU node types people rent: whole pods per node, CPU, memory and
ephemeral storage within what the node leaves pods; the README's sizing table lists the same node types."""

from __future__ import annotations

import copy
import re

import pytest

from tests.k8s.manifests import K8S_DIR, ids, is_opt_in, job_specs
from tests.k8s.node_fit import NODE_TYPES, POD_EPHEMERAL_BUDGET_GIB, group_fits, reserved_cpu, reserved_memory_gib


@pytest.mark.parametrize("node", NODE_TYPES, ids=[n.name for n in NODE_TYPES])
@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_gpu_pods_fit_every_common_8_gpu_node(item, node):
    doc, spec = item
    fits, problems = group_fits(spec, node)
    if is_opt_in(doc) and not node.nvme_gb:
        assert problems == [f"gpu-1x: a 32 GiB cache does not fit a {node.name}'s local NVMe (0 GB)"]
        problems = []  # the opt-in node cache needs local SSDs added to this node type's pool (k8s/README.md)
    assert problems == []
    assert fits, "a job without a GPU worker group"
    for fit in fits:
        assert fit.pods_per_node * _gpus_per_pod(spec, fit.group) == node.gpus, "every GPU of the node is used"


def _gpus_per_pod(spec: dict, group: str) -> int:
    (g,) = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == group]
    return int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])


def test_the_reservation_model_is_not_trivially_satisfied():
    smallest = min(NODE_TYPES, key=lambda n: (n.vcpus, n.memory_gib))
    assert smallest.name == "a2-highgpu-8g"
    assert 6 < reserved_cpu(smallest) < 8 and 30 < reserved_memory_gib(smallest) < 40
    assert 40 < POD_EPHEMERAL_BUDGET_GIB < 60


def _worker(spec: dict) -> dict:
    return spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]


def test_the_fit_check_catches_pods_that_would_stay_pending():
    _, spec = next(i for i in job_specs() if i[0].name == "internvl-label-vqa-8b")
    node = next(n for n in NODE_TYPES if n.name == "p4d.24xlarge")
    assert group_fits(spec, node)[1] == []
    cases = {
        "12 CPU x 8 pods (the old size)": ("cpu", "12", "CPU"),
        "96Gi x 8 on a 680 GiB node": ("memory", "96Gi", "GiB;"),
        "40Gi of ephemeral storage x 8": ("ephemeral-storage", "40Gi", "ephemeral"),
    }
    small = next(n for n in NODE_TYPES if n.name == "a2-highgpu-8g")
    for case, (res, value, expected) in cases.items():
        broken = copy.deepcopy(spec)
        ray = _worker(broken)["containers"][0]["resources"]
        ray["requests"][res] = value
        problems = group_fits(broken, small)[1]
        assert any(expected in p for p in problems), (case, problems)
    broken = copy.deepcopy(spec)
    _worker(broken)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 3
    assert any("idle" in p for p in group_fits(broken, node)[1])
    broken = copy.deepcopy(spec)
    _worker(broken)["initContainers"] = [{"name": "i", "resources": {"requests": {"memory": "600Gi"}}}]
    assert any("GiB;" in p for p in group_fits(broken, small)[1]), "an init container's request counts too"
    broken = copy.deepcopy(spec)
    _worker(broken)["containers"][0]["resources"]["requests"]["memory"] = "16Gi"
    assert any("below /dev/shm" in p for p in group_fits(broken, node)[1]), "/dev/shm counts in the memory request"
    assert any("GiB;" in p for p in group_fits(broken, small)[1]) is False, "and is counted per node instead"


def test_the_fit_check_counts_an_opt_in_node_cache_on_the_nvme_only():
    _, spec = next(i for i in job_specs() if is_opt_in(i[0]))
    node = next(n for n in NODE_TYPES if n.name == "p4d.24xlarge")
    assert group_fits(spec, node)[1] == []
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    broken = copy.deepcopy(spec)
    cache = next(
        v for v in broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"] if "hostPath" in v
    )
    cache["hostPath"]["path"] = "/var/lib/internvl-batch/models"
    assert any("boot disk" in p for p in group_fits(broken, node)[1])
    broken = copy.deepcopy(spec)
    broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["metadata"]["annotations"][
        "internvl-batch/model-cache-gib"
    ] = "9000"
    assert any("does not fit" in p for p in group_fits(broken, node)[1])
    broken = copy.deepcopy(spec)
    broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["metadata"].pop("annotations")
    assert any("can't be counted" in p for p in group_fits(broken, node)[1])
    assert group["template"]["metadata"]["annotations"], "the opt-in was not changed by the cases above"
    broken = copy.deepcopy(spec)
    del _worker(broken)["containers"][0]["resources"]["requests"]["ephemeral-storage"]
    assert any("request ephemeral-storage" in p for p in group_fits(broken, node)[1])


def test_the_readme_sizing_table_lists_the_node_types_checked_here():
    readme = (K8S_DIR / "README.md").read_text()
    section = readme[readme.index("## Pod sizing") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {re.match(r"\| `([^`]+)`", r).group(1) for r in rows}
    assert listed == {n.name for n in NODE_TYPES}
