"""Every k8s/ document is well formed: required fields, valid and unique names, no committed secrets."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.k8s.checks import LITERAL_SECRET
from tests.k8s.crd import CRD_FILES
from tests.k8s.dockerfile import DOCKERFILE, DOCKERIGNORE
from tests.k8s.manifests import K8S_DIR, REPO, ids, job_specs, k8s_docs, mounted_job_config

MAX_RAYJOB_NAME = 47  # KubeRay: RayCluster names <= 53, minus the 6 characters it appends
MAX_RAYCRONJOB_NAME = MAX_RAYJOB_NAME - 6  # RayCronJob appends "-xxxxx" for each RayJob


def test_k8s_has_the_expected_resources(configmaps):
    kinds = [d.kind for d in k8s_docs()]
    assert "RayJob" in kinds and "RayCronJob" in kinds and "ConfigMap" in kinds, kinds
    tps = {
        yaml.safe_load(mounted_job_config(spec, configmaps))["model"].get("tensor_parallel_size", 1)
        for _, spec in job_specs()
    }
    assert any(tp > 1 for tp in tps), "a tensor-parallel variant (e.g. 78B-AWQ, TP 4) is expected"


@pytest.mark.parametrize("doc", k8s_docs(), ids=ids(k8s_docs()))
def test_every_document_has_the_required_fields(doc):
    body = doc.body
    assert isinstance(body, dict), f"{doc}: not a mapping"
    if doc.path.name in ("kustomization.yaml", "kustomization.yml"):
        for res in body.get("resources", []):
            assert (doc.path.parent / res).exists(), f"{doc}: resource {res} not found"
        return
    assert body.get("apiVersion"), f"{doc}: apiVersion missing"
    assert body.get("kind"), f"{doc}: kind missing"
    assert doc.name, f"{doc}: metadata.name missing"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", doc.name), f"{doc}: not a DNS-1123 name"
    if doc.kind in CRD_FILES:
        limit = MAX_RAYCRONJOB_NAME if doc.kind == "RayCronJob" else MAX_RAYJOB_NAME
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc.name) and len(doc.name) <= limit, (
            f"{doc}: KubeRay wants a DNS-1035 label of at most {limit} characters"
        )
    if doc.kind == "ConfigMap":
        assert body["apiVersion"] == "v1"
        data = body.get("data")
        assert isinstance(data, dict) and data, f"{doc}: data missing"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()), (
            f"{doc}: data must map str to str"
        )
    if doc.kind == "Secret":
        assert not body.get("data") and not body.get("stringData"), (
            f"{doc}: never commit Secret values; create the Secret with kubectl (k8s/README.md)"
        )


def test_document_names_are_unique():
    seen = [(d.kind, d.name) for d in k8s_docs() if d.kind]
    assert len(seen) == len(set(seen)), seen


def test_no_literal_credentials_anywhere():
    files = [*K8S_DIR.rglob("*"), DOCKERFILE, DOCKERIGNORE, *(REPO / "configs").glob("*.y*ml")]
    for f in files:
        if f.is_file():
            m = LITERAL_SECRET.search(f.read_text())
            assert m is None, f"{f.relative_to(REPO)} holds what looks like a credential: {m.group(0)[:12]}..."
