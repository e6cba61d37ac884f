"""Every pod of the default manifests passes the "restricted" Pod Security Standard (GKE Autopilot
and namespaces labelled pod-security.kubernetes.io/enforce=restricted admit them), KubeRay's
injected containers included; the opt-in node cache needs exactly one exception, its hostPath; and
the rules catch each kind of violation."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.manifests import docs_of, ids, is_opt_in, job_specs, pod_specs
from tests.k8s.pod_security import kuberay_injected, restricted_problems


def _pods(spec: dict) -> list[tuple[str, dict, list]]:
    return [(where, pod, kuberay_injected(spec, where, pod)) for where, pod in pod_specs(spec)]


@pytest.mark.parametrize("item", job_specs(), ids=ids(job_specs()))
def test_ray_pods_are_restricted(item):
    doc, spec = item
    for where, pod, extra in _pods(spec):
        problems = restricted_problems(pod, extra)
        if is_opt_in(doc) and where != "head":
            assert problems == ["volume model-cache: hostPath (baseline)"], "the opt-in's one exception"
        else:
            assert problems == [], where


def test_the_mirror_job_is_restricted():
    (job,) = [d.body for d in docs_of("Job")]
    assert restricted_problems(job["spec"]["template"]["spec"]) == []


def _head(spec):
    return spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def _worker(spec):
    return spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]


BROKEN = {
    "runAsNonRoot unset": (lambda s: _head(s)["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    "root user": (lambda s: _worker(s)["securityContext"].update(runAsUser=0), "runAsUser: 0"),
    "privilege escalation": (
        lambda s: _head(s)["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation",
    ),  # fmt: skip
    "capabilities kept": (lambda s: _worker(s)["containers"][0]["securityContext"].pop("capabilities"), "drop ALL"),
    "a capability added": (
        lambda s: _worker(s)["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "SYS_ADMIN",
    ),  # fmt: skip
    "no seccomp": (lambda s: _worker(s)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "seccomp unconfined": (
        lambda s: _head(s)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "Unconfined",
    ),  # fmt: skip
    "hostPath": (lambda s: _worker(s)["volumes"].append({"name": "h", "hostPath": {"path": "/var/lib/x"}}), "hostPath"),
    "root init container": (
        lambda s: _worker(s).update(
            initContainers=[
                {
                    "name": "chown",
                    "securityContext": {
                        "runAsUser": 0,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ]
        ),
        "runAsUser: 0",
    ),  # fmt: skip
    "autoscaler sidecar unhardened": (
        lambda s: s["rayClusterSpec"]["autoscalerOptions"].pop("securityContext"),
        "autoscaler sidecar",
    ),  # fmt: skip
    "host network": (lambda s: _head(s).update(hostNetwork=True), "hostNetwork"),
    "privileged": (lambda s: _worker(s)["containers"][0]["securityContext"].update(privileged=True), "privileged"),
    "hostPort": (
        lambda s: _head(s)["containers"][0]["ports"].append({"containerPort": 9999, "hostPort": 9999}),
        "hostPort",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_restricted_rules_catch_each_violation(case):
    edit, expected = BROKEN[case]
    spec = copy.deepcopy(next(spec for doc, spec in job_specs() if doc.kind == "RayJob" and not is_opt_in(doc)))
    edit(spec)
    problems = [p for _, pod, extra in _pods(spec) for p in restricted_problems(pod, extra)]
    assert any(expected in p for p in problems), (case, problems)


def test_kuberays_worker_init_container_inherits_the_ray_containers_context():
    spec = copy.deepcopy(job_specs()[0][1])
    _worker(spec)["containers"][0].pop("securityContext")
    _worker(spec).pop("securityContext")
    problems = restricted_problems(_worker(spec), kuberay_injected(spec, "worker group x", _worker(spec)))
    assert any("wait-gcs-ready" in p for p in problems)
