"""The k8s/ documents, loaded once, and the paths into them that the checks share."""

from __future__ import annotations

import functools
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Doc:
    path: Path
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return self.body.get("kind", "")

    @property
    def name(self) -> str:
        return (self.body.get("metadata") or {}).get("name", "")

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}#{self.index} {self.kind}/{self.name}"


@functools.cache
def k8s_docs() -> tuple[Doc, ...]:
    docs = []
    for path in sorted(K8S_DIR.rglob("*.y*ml")):
        for i, body in enumerate(yaml.load_all(path.read_text(), Loader=Loader)):
            if body is not None:
                docs.append(Doc(path, i, body))
    return tuple(docs)


def docs_of(*kinds: str) -> list[Doc]:
    return [d for d in k8s_docs() if d.kind in kinds]


def job_spec(body: dict) -> dict:
    """The RayJob spec of a RayJob, or of a RayCronJob's jobTemplate."""
    return body["spec"] if body["kind"] == "RayJob" else body["spec"]["jobTemplate"]


def job_specs() -> list[tuple[Doc, dict]]:
    """(document, RayJob spec) for every RayJob and every RayCronJob's jobTemplate."""
    return [(d, job_spec(d.body)) for d in docs_of("RayJob", "RayCronJob")]


def ids(items) -> list[str]:
    """Test ids for parametrizing over documents or (document, spec) pairs."""
    return [str(i[0] if isinstance(i, tuple) else i) for i in items]


def set_path(body: dict, path: str, value) -> None:
    """Set body[a][b]... for path "a/b/..." (list indices as numbers); value KeyError deletes."""
    node = body
    *parents, last = path.split("/")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[int(last) if isinstance(node, list) else last]
    else:
        node[int(last) if isinstance(node, list) else last] = value


def walk(node):
    """(key, value) of every mapping entry in a tree of dicts and lists."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


# -- pods, containers, quantities -------------------------------------------------------


def quantity(v) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(
        r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[mkMGTPE]?)", str(v).strip()
    )
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {v!r}")
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    scale.update({f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")})
    return float(m.group(1)) * scale[m.group(2)]


def resource(container: dict, section: str, name: str, default=None):
    """container.resources[section][name] ("limits" or "requests"), tolerating missing levels."""
    return ((container.get("resources") or {}).get(section) or {}).get(name, default)


def gpus(container: dict, section: str = "limits") -> float:
    return quantity(resource(container, section, "nvidia.com/gpu", 0))


def head_pod(spec: dict) -> dict:
    return spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    """(group name, pod spec) of the head, each worker group and a custom submitter."""
    cluster = spec.get("rayClusterSpec") or {}
    out = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    out += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if spec.get("submitterPodTemplate"):
        out.append(("submitter", spec["submitterPodTemplate"]["spec"]))
    return out


def containers_of(spec: dict):
    for where, pod in pod_specs(spec):
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            yield where, c
    autoscaler = (spec.get("rayClusterSpec") or {}).get("autoscalerOptions") or {}
    if autoscaler:
        yield "autoscaler", autoscaler


# -- the job config an entrypoint reads --------------------------------------------------


def static_argv(entrypoint: str) -> list[str]:
    """The entrypoint's words, each $(...) command substitution standing as one word."""
    return shlex.split(re.sub(r"\$\([^()]*\)", "SUBST", entrypoint))


def volumes_mounted_at(spec: dict, directory: str) -> list[dict]:
    """The volumes the head's Ray container (its first) mounts at `directory`."""
    head = head_pod(spec)
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    return [
        volumes.get(m["name"]) or {}
        for m in head["containers"][0].get("volumeMounts", [])
        if directory == posixpath.normpath(m["mountPath"])
    ]


def configmap_key(ref: dict, filename: str) -> str:
    """The key a configMap volume shows as `filename` (its items may map keys to other paths)."""
    for item in ref.get("items", []):
        if item.get("path") == filename:
            return item["key"]
    return filename


def entrypoint_args(entrypoint: str):
    """The entrypoint's arguments as `internvl-rayjob` parses them (its own parser), or ValueError."""
    import contextlib
    import io

    from internvl_batch.job.rayjob import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(static_argv(entrypoint)[1:])
    except SystemExit:
        raise ValueError(err.getvalue().strip().splitlines()[-1] if err.getvalue() else "bad arguments") from None


def entrypoint_config(entrypoint: str) -> str:
    """CONFIG of `internvl-rayjob [options] CONFIG [--set k=v ...]`."""
    return entrypoint_args(entrypoint).config


MIN_VERSION_ANNOTATION = "internvl-batch/min-kuberay-version"


def min_kuberay_version(body: dict) -> str | None:
    return ((body.get("metadata") or {}).get("annotations") or {}).get(MIN_VERSION_ANNOTATION)


def is_opt_in(doc: Doc) -> bool:
    """k8s/opt-in/: variants for clusters that allow more (e.g. hostPath), outside the default checks."""
    return doc.path.parent.name == "opt-in"


def mounted_job_config(spec: dict, configmaps: dict[str, dict]) -> str:
    """The text of the job config the entrypoint reads, from the ConfigMap mounted there."""
    config = entrypoint_config(spec["entrypoint"])
    (volume,) = volumes_mounted_at(spec, posixpath.dirname(config))
    ref = volume["configMap"]
    return configmaps[ref["name"]]["data"][configmap_key(ref, posixpath.basename(config))]
