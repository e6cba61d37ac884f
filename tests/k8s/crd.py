"""The KubeRay CRDs from $KUBERAY_CRD_DIR (never copied into the repo) as strict JSON-schema validators.

Without the CRDs the schema tests skip locally and fail in CI (CI set): see crds_from_env.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

from tests.k8s.manifests import Loader

CRD_FILES = {
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}


def _int_format(bits: int):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or lo <= value <= hi

    return check


FORMATS = FormatChecker(formats=())
FORMATS.checks("int32")(_int_format(32))
FORMATS.checks("int64")(_int_format(64))


def _list_type(validator, list_type, instance, schema):
    """x-kubernetes-list-type: `map` items are unique by their list-map-keys, `set` items unique."""
    if not validator.is_type(instance, "array"):
        return
    seen: dict[str, int] = {}
    keys = schema.get("x-kubernetes-list-map-keys", [])
    for i, item in enumerate(instance):
        if list_type == "map" and isinstance(item, dict):
            key = json.dumps([item.get(k) for k in keys], sort_keys=True)
        elif list_type == "set":
            key = json.dumps(item, sort_keys=True)
        else:
            continue
        if key in seen:
            what = f"{keys}={key}" if list_type == "map" else key
            yield ValidationError(f"duplicate entry {what} (items {seen[key]} and {i}; list-type {list_type})")
        seen[key] = i


K8sValidator = validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type})


def to_json_schema(node, *, strict: bool = True):
    """An OpenAPI v3 (structural, Kubernetes) schema as a Draft 4 JSON schema.

    - nullable: true -> "null" is allowed too;
    - x-kubernetes-int-or-string -> integer or string;
    - strict: an object schema with properties and neither additionalProperties nor
      x-kubernetes-preserve-unknown-fields accepts no other field (the API server would
      prune it silently; kubectl's strict field validation rejects it);
    - x-kubernetes-embedded-resource objects also accept apiVersion/kind/metadata.
    Other x-kubernetes-* keys are kept: list-type is checked by K8sValidator; CEL rules
    (x-kubernetes-validations) are not evaluated.
    """
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if "properties" in out:
        out["properties"] = {k: to_json_schema(v, strict=strict) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(out["additionalProperties"], strict=strict)
    if isinstance(out.get("items"), dict):
        out["items"] = to_json_schema(out["items"], strict=strict)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [to_json_schema(s, strict=strict) for s in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = to_json_schema(out["not"], strict=strict)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if out.get("x-kubernetes-embedded-resource") and "properties" in out:
        for k, v in (
            ("apiVersion", {"type": "string"}),
            ("kind", {"type": "string"}),
            ("metadata", {"type": "object"}),
        ):
            out["properties"].setdefault(k, v)
    if (
        strict
        and out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class CRDs:
    """The KubeRay CRDs of one directory; each loaded (~1 MB of YAML) once, when first needed."""

    def __init__(self, directory: Path):
        self.directory = directory

    @functools.cache
    def crd(self, kind: str) -> dict:
        return yaml.load((self.directory / CRD_FILES[kind]).read_text(), Loader=Loader)

    @functools.cache
    def schema(self, kind: str) -> dict:
        """The OpenAPI v3 schema of the CRD's served v1 version."""
        crd = self.crd(kind)
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1.get("served", True), f"{kind} v1 is not served by this CRD"
        return v1["schema"]["openAPIV3Schema"]

    @functools.cache
    def validator(self, kind: str):
        return K8sValidator(to_json_schema(self.schema(kind)), format_checker=FORMATS)

    def errors(self, body: dict) -> list[str]:
        kind = body.get("kind")
        if kind not in CRD_FILES:
            return [f"not a KubeRay kind: {kind!r}"]
        crd = self.crd(kind)
        problems = []
        if body.get("apiVersion") != f"{crd['spec']['group']}/v1":
            problems.append(f"apiVersion {body.get('apiVersion')!r} != {crd['spec']['group']}/v1")
        for e in sorted(self.validator(kind).iter_errors(body), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            problems.append(f"{where}: {e.message}")
        return problems


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# The released operators the manifests are checked against: their CRDs exactly as tagged, in
# $KUBERAY_CRD_DIR/releases/<version>/ (ray-operator/config/crd/bases/ at that tag).
RELEASES = ("v1.6.2", "v1.7.0")


def crds_from_env(release: str | None = None) -> CRDs:
    """The CRDs of $KUBERAY_CRD_DIR (its releases/<release>/ when given); without them, skip
    locally but fail in CI. One loader per directory: each CRD is parsed once per session."""
    return _crds(os.environ.get("KUBERAY_CRD_DIR", "").strip(), release)


@functools.cache
def _crds(raw: str, release: str | None) -> CRDs:
    problem = None
    if not raw:
        problem = "KUBERAY_CRD_DIR is not set (the Makefile sets it to ../shared/kuberay-crds)"
    else:
        raw = str(Path(raw) / "releases" / release) if release else raw
        missing = [f for f in CRD_FILES.values() if not (Path(raw) / f).is_file()]
        if missing:
            problem = f"KUBERAY_CRD_DIR={raw} lacks {missing}"
    if problem:
        if _in_ci():
            pytest.fail(f"{problem}: the KubeRay CRDs are required in CI", pytrace=False)
        pytest.skip(f"{problem}; skipping the CRD schema checks")
    return CRDs(Path(raw))
