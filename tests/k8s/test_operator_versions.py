"""Each KubeRay resource states the oldest operator it needs and validates against that release's CRDs
(as tagged: $KUBERAY_CRD_DIR/releases/) and against every later release checked here; a field of a
newer release (the nightly's old `timeZone`) fails on the older one."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.crd import CRD_FILES, RELEASES, crds_from_env
from tests.k8s.manifests import docs_of, ids, min_kuberay_version

KUBERAY_DOCS = docs_of(*CRD_FILES)


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.lstrip("v").split("."))


@pytest.mark.parametrize("doc", KUBERAY_DOCS, ids=ids(KUBERAY_DOCS))
def test_each_resource_states_the_oldest_kuberay_it_needs(doc):
    claimed = min_kuberay_version(doc.body)
    assert claimed in RELEASES, f"{doc}: state the oldest KubeRay it needs, one of {RELEASES} (the CRDs checked here)"


CLAIMS = [
    (doc, release)
    for doc in KUBERAY_DOCS
    for release in RELEASES
    if _version(release) >= _version(min_kuberay_version(doc.body) or RELEASES[0])
]


@pytest.mark.parametrize(("doc", "release"), CLAIMS, ids=[f"{d}@{r}" for d, r in CLAIMS])
def test_validates_against_every_release_it_claims(doc, release):
    assert crds_from_env(release).errors(doc.body) == []


def test_the_oldest_release_catches_a_newer_field():
    (cron,) = [copy.deepcopy(d.body) for d in docs_of("RayCronJob")]
    cron["spec"]["timeZone"] = "Etc/UTC"
    assert crds_from_env("v1.7.0").errors(cron) == []
    assert any("timeZone" in e for e in crds_from_env("v1.6.2").errors(cron)), "v1.6.2 has no timeZone"
    job = copy.deepcopy(next(d.body for d in docs_of("RayJob")))
    job["spec"]["rayClusterSpec"]["historyServerOptions"] = {}  # a v1.7.0 field
    assert crds_from_env("v1.7.0").errors(job) == []
    assert crds_from_env("v1.6.2").errors(job)
