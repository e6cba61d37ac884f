"""The KubeRay resources pass their CRD's schema, strictly, and the validator rejects broken ones."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.crd import CRD_FILES
from tests.k8s.manifests import docs_of, ids, job_spec, job_specs, set_path


@pytest.mark.parametrize("doc", docs_of(*CRD_FILES), ids=ids(docs_of(*CRD_FILES)))
def test_kuberay_resources_match_their_crd(crds, doc):
    assert crds.errors(doc.body) == []


def _first(kind: str) -> dict:
    return copy.deepcopy(docs_of(kind)[0].body)


# case -> (kind, path under the RayJob spec (RayCronJob: under spec), value (KeyError: delete), expected error)
WORKER = "rayClusterSpec/workerGroupSpecs/0"
HEAD_CONTAINER = "rayClusterSpec/headGroupSpec/template/spec/containers/0"
BROKEN = {
    "wrong type (string for int32)": ("RayJob", f"{WORKER}/maxReplicas", "eight", "is not of type 'integer'"),
    "unknown field (typo)": ("RayJob", "shutdownAfterJobFinish", True, "Additional properties are not allowed"),
    "missing required field": ("RayJob", f"{WORKER}/groupName", KeyError, "'groupName' is a required property"),
    "value outside an enum": ("RayJob", "rayClusterSpec/autoscalerOptions/upscalingMode", "Fast", "is not one of"),
    "int-or-string given a list": ("RayJob", f"{HEAD_CONTAINER}/resources/limits/cpu", [4], "is not valid under any"),
    "malformed quantity": ("RayJob", f"{HEAD_CONTAINER}/resources/limits/memory", "16GB", "does not match"),
    "int32 overflow": ("RayJob", "activeDeadlineSeconds", 2**31, "is not a 'int32'"),
    "duplicate env name (list-map)": ("RayJob", f"{HEAD_CONTAINER}/env/1/name", "AWS_ACCESS_KEY_ID", "duplicate entry"),
    "nested unknown field (pod template)": (
        "RayJob",
        f"{HEAD_CONTAINER}/resource",
        {"limits": {}},
        "Additional properties",
    ),
    "empty timeZone (minLength)": ("RayCronJob", "timeZone", "", "should be non-empty"),
    "schedule of the wrong type": ("RayCronJob", "schedule", 1500, "is not of type 'string'"),
    "cron template typo": (
        "RayCronJob",
        "jobTemplate/entryPoint",
        "python x.py",
        "Additional properties are not allowed",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_crd_validation_rejects_a_broken_manifest(crds, case):
    kind, path, value, expected = BROKEN[case]
    body = _first(kind)
    assert crds.errors(body) == []
    set_path(body["spec"] if kind == "RayCronJob" else job_spec(body), path, value)
    errors = crds.errors(body)
    assert any(expected in e for e in errors), f"{case}: expected {expected!r} in {errors}"


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_cluster_spec_is_a_valid_raycluster(crds, item):
    """KubeRay makes a RayCluster of each rayClusterSpec; it must pass the RayCluster CRD too."""
    doc, spec = item
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": doc.name},
        "spec": copy.deepcopy(spec["rayClusterSpec"]),
    }
    assert crds.errors(cluster) == []
    cluster["spec"]["workerGroupSpecs"][0]["minReplicas"] = "0"
    assert any("is not of type 'integer'" in e for e in crds.errors(cluster))


def test_crd_validation_checks_api_version_and_kind(crds):
    body = _first("RayJob")
    body["apiVersion"] = "ray.io/v1alpha2"
    assert any("apiVersion" in e for e in crds.errors(body))
    body["kind"] = "RayJobs"
    assert crds.errors(body) == ["not a KubeRay kind: 'RayJobs'"]


def test_raycronjob_crd_fields_used_exist(crds):
    """The RayCronJob spec fields the manifests rely on exist in this CRD version."""
    props = crds.schema("RayCronJob")["properties"]["spec"]["properties"]
    for doc in docs_of("RayCronJob"):
        assert set(doc.body["spec"]) <= set(props), sorted(set(doc.body["spec"]) - set(props))
    assert {"schedule", "jobTemplate", "suspend"} <= set(props)
