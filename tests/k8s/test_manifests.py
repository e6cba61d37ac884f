"""Static checks of the deployment: k8s/ manifests, docker/Dockerfile and the GPU job configs.

- Every KubeRay resource (RayJob, RayCronJob, RayCluster) is validated against its CRD's
  `spec.versions[v1].schema.openAPIV3Schema` (from $KUBERAY_CRD_DIR, never copied into the
  repo), strictly: unknown fields are errors, as `kubectl apply` (strict field
  validation) makes them. Negative tests prove the validator rejects broken manifests.
- What a schema can't see: the entrypoint's script is in the image, the job config it reads
  is a mounted ConfigMap that passes `internvl-batch validate --config-only`, GPU limits
  fit tensor_parallel_size and runtime.replicas, the image's Ray equals the pinned Ray,
  credentials only come from Secrets, /dev/shm is memory-backed, and the nightly
  RayCronJob can neither overlap the next night nor change its date between retries.

Without $KUBERAY_CRD_DIR the schema tests skip locally and fail in CI (CI set).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from subprocess import list2cmdline

import pytest
import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

from internvl_batch.cli import main as cli_main
from internvl_batch.config import JobConfig

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
GPU_CONFIGS = ("configs/nightly-caption.yaml", "configs/label-vqa.yaml")
CRD_FILES = {
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
    "RayCluster": "ray.io_rayclusters.yaml",
}
PYTHON_TAG = "py311"  # the Python the project is built and tested on
MAX_RAYJOB_NAME = 47  # KubeRay: RayCluster names <= 53, minus the 6 characters it appends
MAX_RAYCRONJOB_NAME = MAX_RAYJOB_NAME - 6  # RayCronJob appends "-xxxxx" for each RayJob
RETRY_GAP_S = 900  # allowance between two attempts of a RayJob (cluster teardown, new submit)

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- loading --------------------------------------------------------------------------


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


def job_specs() -> list[tuple[Doc, dict]]:
    """(document, RayJob spec) for every RayJob and every RayCronJob's jobTemplate."""
    out = []
    for d in docs_of("RayJob", "RayCronJob"):
        out.append((d, d.body["spec"] if d.kind == "RayJob" else d.body["spec"]["jobTemplate"]))
    return out


def _ids(items) -> list[str]:
    return [str(i[0] if isinstance(i, tuple) else i) for i in items]


@functools.cache
def ray_pin() -> str:
    m = re.search(r'"ray\[[^\]]*\]==([0-9][0-9A-Za-z.]*)"', (REPO / "pyproject.toml").read_text())
    assert m, "pyproject.toml must pin ray exactly: \"ray[data]==X.Y.Z\""
    return m.group(1)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# -- CRD schemas -> strict JSON-schema validators ---------------------------------------


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
        for k, v in (("apiVersion", {"type": "string"}), ("kind", {"type": "string"}), ("metadata", {"type": "object"})):
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
    def validator(self, kind: str):
        crd = self.crd(kind)
        assert crd["spec"]["names"]["kind"] == kind
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1.get("served", True), f"{kind} v1 is not served by this CRD"
        return K8sValidator(to_json_schema(v1["schema"]["openAPIV3Schema"]), format_checker=FORMATS)

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


@pytest.fixture(scope="session")
def crds() -> CRDs:
    raw = os.environ.get("KUBERAY_CRD_DIR", "").strip()
    problem = None
    if not raw:
        problem = "KUBERAY_CRD_DIR is not set (the Makefile sets it to ../shared/kuberay-crds)"
    else:
        missing = [f for f in CRD_FILES.values() if not (Path(raw) / f).is_file()]
        if missing:
            problem = f"KUBERAY_CRD_DIR={raw} lacks {missing}"
    if problem:
        if _in_ci():
            pytest.fail(f"{problem}: the KubeRay CRDs are required in CI", pytrace=False)
        pytest.skip(f"{problem}; skipping the CRD schema checks")
    return CRDs(Path(raw))


# -- pods, containers, quantities -------------------------------------------------------


def _quantity(v) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[mkMGTPE]?)", str(v).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {v!r}")
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    scale.update({f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")})
    return float(m.group(1)) * scale[m.group(2)]


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


def _gpus(container: dict, section: str = "limits") -> float:
    return _quantity(((container.get("resources") or {}).get(section) or {}).get("nvidia.com/gpu", 0))


# -- the image: Dockerfile and .dockerignore --------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instr, _, args = full.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """The base image and the instructions of the last build stage."""
    froms = [i for i, (instr, _) in enumerate(instructions) if instr == "FROM"]
    assert froms, "the Dockerfile has no FROM"
    args = [a for a in instructions[froms[-1]][1].split() if not a.startswith("--")]
    return args[0], instructions[froms[-1] + 1 :]


def image_file_map(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Path in the image -> path in the repo, for what the final stage COPY/ADDs from the context."""
    _, stage = final_stage(instructions)
    workdir, mapping = "/", {}
    for instr, args in stage:
        if instr == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, args))
        elif instr in ("COPY", "ADD"):
            tokens = shlex.split(args)
            if tokens and tokens[0].startswith("["):
                tokens = json.loads(args)
            flags = [t for t in tokens if t.startswith("--")]
            if any(f.startswith("--from") for f in flags):
                continue
            *srcs, dest = [t for t in tokens if not t.startswith("--")]
            dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
            into_dir = dest.endswith("/") or len(srcs) > 1
            for src in srcs:
                src = posixpath.normpath(src)
                if (REPO / src).is_dir():
                    mapping[dest_abs] = src
                elif into_dir:
                    mapping[posixpath.join(dest_abs, posixpath.basename(src))] = src
                else:
                    mapping[dest_abs] = src
    return mapping


def repo_path_in_image(image_path: str, mapping: dict[str, str]) -> str | None:
    """The repo path that ends up at `image_path` in the image, or None."""
    image_path = posixpath.normpath(image_path)
    for dest in sorted(mapping, key=len, reverse=True):
        if image_path == dest:
            return mapping[dest]
        if image_path.startswith(dest.rstrip("/") + "/"):
            return posixpath.join(mapping[dest], image_path[len(dest.rstrip("/")) + 1 :])
    return None


def _ignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        pattern = posixpath.normpath(raw.lstrip("!").strip().strip("/"))
        rx = _ignore_regex(pattern)
        if any(rx.match(p) for p in prefixes):
            excluded = not negate
    return excluded


# -- checks a schema can't express (each returns a list of problems) --------------------


def static_argv(entrypoint: str) -> list[str]:
    """The entrypoint's words, each $(...) command substitution standing as one word."""
    return shlex.split(re.sub(r"\$\([^()]*\)", "SUBST", entrypoint))


def entrypoint_problems(spec: dict, configmaps: dict[str, dict], files: dict[str, str]) -> list[str]:
    """The entrypoint runs a script the image has, with a job config from a mounted ConfigMap."""
    entrypoint = spec.get("entrypoint", "")
    problems = []
    if "\n" in entrypoint or "#" in entrypoint or "\\" in entrypoint:
        problems.append("the entrypoint must be one line without '#' or '\\' (KubeRay pastes it into a shell line)")
    try:
        argv = static_argv(entrypoint)
    except ValueError as e:
        return [*problems, f"entrypoint does not parse as a shell command: {e}"]
    if len(argv) < 3 or argv[0] not in ("python", "python3"):
        return [*problems, f"expected `python /app/jobs/run_job.py CONFIG [--set k=v ...]`, got {entrypoint!r}"]
    script, config = argv[1], argv[2]
    src = repo_path_in_image(script, files)
    if src is None:
        problems.append(f"{script} is not COPY'd into the image by docker/Dockerfile")
    elif not (REPO / src).is_file():
        problems.append(f"{script} comes from {src}, which does not exist in the repo")
    rest = argv[3:]
    while rest:
        if rest[0] != "--set" or len(rest) < 2 or "=" not in rest[1]:
            problems.append(f"unexpected entrypoint arguments {rest}")
            break
        rest = rest[2:]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    mounts = [m for m in head["containers"][0].get("volumeMounts", [])
              if posixpath.dirname(config) == posixpath.normpath(m["mountPath"])]
    if not mounts:
        return [*problems, f"the job config {config} is not under a volume mounted in the head's Ray container"]
    cm_ref = (volumes.get(mounts[0]["name"]) or {}).get("configMap")
    if not cm_ref:
        return [*problems, f"the volume mounted at {posixpath.dirname(config)} is not a ConfigMap"]
    key = posixpath.basename(config)
    for item in cm_ref.get("items", []):
        if item.get("path") == key:
            key = item["key"]
    cm = configmaps.get(cm_ref["name"])
    if cm is None:
        problems.append(f"ConfigMap {cm_ref['name']!r} (mounted at {posixpath.dirname(config)}) is not in k8s/")
    elif key not in (cm.get("data") or {}):
        problems.append(f"ConfigMap {cm_ref['name']!r} has no key {key!r}")
    return problems


def mounted_job_config(spec: dict, configmaps: dict[str, dict]) -> str:
    config = static_argv(spec["entrypoint"])[2]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    (mount,) = [m for m in head["containers"][0]["volumeMounts"]
                if posixpath.dirname(config) == posixpath.normpath(m["mountPath"])]
    return configmaps[volumes[mount["name"]]["configMap"]["name"]]["data"][posixpath.basename(config)]


def gpu_problems(spec: dict, cfg: JobConfig) -> list[str]:
    """GPU workers fit the config: whole replicas per pod, enough GPUs and CPUs for the job."""
    tp, rt = cfg.model.tensor_parallel_size, cfg.runtime
    cluster = spec["rayClusterSpec"]
    problems = []
    if not rt.use_gpu:
        problems.append("runtime.use_gpu is false on a GPU cluster")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    if _gpus(head) or _gpus(head, "requests"):
        problems.append("the head asks for GPUs; replicas run on the GPU worker groups")
    total_gpus = total_cpus = 0.0
    for g in cluster.get("workerGroupSpecs", []):
        name, ray = g["groupName"], g["template"]["spec"]["containers"][0]
        lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1), g.get("replicas", 0)
        if not lo <= n <= hi:
            problems.append(f"{name}: replicas={n} is not within [minReplicas={lo}, maxReplicas={hi}]")
        pods = hi * g.get("numOfHosts", 1)
        gpus = _gpus(ray)
        requested = ((ray.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu")
        if requested is not None and _quantity(requested) != gpus:
            problems.append(f"{name}: nvidia.com/gpu request {requested} != limit {gpus:g}")
        if "num-gpus" in (g.get("rayStartParams") or {}) and _quantity(g["rayStartParams"]["num-gpus"]) != gpus:
            problems.append(f"{name}: rayStartParams num-gpus != the nvidia.com/gpu limit")
        cpus = _quantity((g.get("rayStartParams") or {}).get("num-cpus")
                         or ((ray.get("resources") or {}).get("limits") or {}).get("cpu", 0))
        total_cpus += pods * cpus
        if gpus:
            if gpus % tp:
                problems.append(f"{name}: {gpus:g} GPUs per pod is not a multiple of "
                                f"model.tensor_parallel_size={tp} (a replica's GPUs must share a pod)")
            total_gpus += pods * gpus
    if not total_gpus:
        problems.append("no worker group has nvidia.com/gpu limits")
    elif rt.replicas * tp > total_gpus:
        problems.append(f"runtime.replicas={rt.replicas} x tensor_parallel_size={tp} needs "
                        f"{rt.replicas * tp} GPUs; the worker groups have at most {total_gpus:g}")
    need_cpus = rt.cpu_workers * rt.cpus_per_worker + rt.replicas * rt.engine_cpus
    if need_cpus > total_cpus:
        problems.append(f"the job's actors need {need_cpus:g} CPUs (cpu_workers x cpus_per_worker + "
                        f"replicas x engine_cpus); the worker groups have at most {total_cpus:g}")
    return problems


def shm_problems(spec: dict) -> list[str]:
    """Every Ray pod mounts a memory-backed emptyDir at /dev/shm, smaller than its memory limit."""
    problems = []
    for where, pod in pod_specs(spec):
        if where == "submitter":
            continue
        ray = pod["containers"][0]
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        shm = [m for m in ray.get("volumeMounts", []) if posixpath.normpath(m["mountPath"]) == "/dev/shm"]
        ed = (vols.get(shm[0]["name"]) or {}).get("emptyDir") if shm else None
        if not ed or ed.get("medium") != "Memory":
            problems.append(f"{where}: /dev/shm must be an emptyDir with medium: Memory")
            continue
        limit = ((ray.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is None or "sizeLimit" not in ed:
            problems.append(f"{where}: set the memory limit and the /dev/shm sizeLimit (it counts against it)")
        elif _quantity(ed["sizeLimit"]) >= _quantity(limit):
            problems.append(f"{where}: /dev/shm sizeLimit {ed['sizeLimit']} >= memory limit {limit}")
        else:
            # Ray's default object store: 30% of memory, capped at 95% of /dev/shm but not below
            # 10 GB; a store larger than /dev/shm moves to /tmp (slow disk).
            shm, mem = _quantity(ed["sizeLimit"]), _quantity(limit)
            store = min(0.3 * mem, max(10e9, 0.95 * shm))
            if store > shm:
                problems.append(f"{where}: /dev/shm {ed['sizeLimit']} is smaller than Ray's object store "
                                f"({store / 2**30:.1f} GiB for {limit}); Ray would fall back to /tmp")
    return problems


CREDENTIAL_ENV = re.compile(r"ACCESS_KEY|SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|CREDENTIAL", re.IGNORECASE)
NOT_SECRET_ENV = {"GOOGLE_APPLICATION_CREDENTIALS"}  # a path to a key file mounted from a Secret
LITERAL_SECRET = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|aws_secret_access_key\W{1,4}[A-Za-z0-9/+]{40}"  # an AWS secret key (40 characters) as a value
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face tokens
    re.IGNORECASE,
)


def secret_problems(spec: dict) -> list[str]:
    """Credentials reach the pods only as secretKeyRef (or a Secret via envFrom), never inline."""
    problems = []
    for where, c in containers_of(spec):
        for e in c.get("env", []):
            name, src = e["name"], e.get("valueFrom") or {}
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                if not ref.get("name") or not ref.get("key"):
                    problems.append(f"{where}: env {name}: secretKeyRef needs name and key")
            elif CREDENTIAL_ENV.search(name) and name not in NOT_SECRET_ENV:
                problems.append(f"{where}: env {name} looks like a credential; take it from a Secret (secretKeyRef)")
            if "value" in e and LITERAL_SECRET.search(str(e["value"])):
                problems.append(f"{where}: env {name} holds a literal credential")
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef:
                problems.append(f"{where}: envFrom configMapRef; credentials belong in a Secret (secretRef)")
    return problems


def image_problems(image: str, pin: str) -> list[str]:
    """The image's Ray is the pinned Ray: rayproject/ray:<pin>-..., or our image tagged ...-ray<pin>."""
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    if not tag:
        return [f"{image}: no tag; pin the Ray version in it"]
    if repo.split("/")[-1].startswith("ray") and repo.rsplit("/", 1)[0] in ("rayproject", "docker.io/rayproject"):
        if not tag.startswith(f"{pin}-") and tag != pin:
            return [f"{image}: Ray {tag.split('-')[0]} != the pinned ray=={pin}"]
        return []
    versions = re.findall(r"ray-?(\d+\.\d+\.\d+)", tag)
    if versions != [pin]:
        return [f"{image}: the tag must carry the image's Ray version as 'ray{pin}' (pyproject pins ray=={pin})"]
    return []


def cron_problems(cron: dict) -> list[str]:
    """A daily schedule whose every attempt ends the same UTC day, before the next night starts."""
    spec, problems = cron["spec"], []
    jt = spec["jobTemplate"]
    fields = str(spec.get("schedule", "")).split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()) or fields[2:] != ["*", "*", "*"]:
        return [f"schedule {spec.get('schedule')!r}: expected a daily 'M H * * *'"]
    start = int(fields[1]) * 3600 + int(fields[0]) * 60
    tz = spec.get("timeZone")
    try:
        zone = zoneinfo.ZoneInfo(tz) if tz else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [f"timeZone {tz!r} is not an IANA time zone"]
    utc = zone is not None and all(
        zone.utcoffset(dt.datetime(2025, m, 1)) == dt.timedelta(0) for m in (1, 7))
    if "$(date" in jt.get("entrypoint", "") and not utc:
        problems.append(f"timeZone {tz!r}: the entrypoint dates each run with `date -u`; schedule in UTC (Etc/UTC) too")
    if "$(date" in jt.get("entrypoint", "") and "date -u" not in jt["entrypoint"]:
        problems.append("the entrypoint's $(date ...) must be UTC (date -u)")
    if not jt.get("shutdownAfterJobFinishes"):
        problems.append("jobTemplate.shutdownAfterJobFinishes must be true (a kept cluster holds the GPUs)")
    deadline = jt.get("activeDeadlineSeconds")
    if not deadline:
        return [*problems, "jobTemplate.activeDeadlineSeconds must bound every attempt (no concurrencyPolicy)"]
    attempts = jt.get("backoffLimit", 0) + 1
    end = start + attempts * (deadline + RETRY_GAP_S) + jt.get("ttlSecondsAfterFinished", 0)
    if end >= 24 * 3600:
        problems.append(
            f"a night may run until {end / 3600:.1f} h after midnight ({attempts} attempts x "
            f"({deadline} s + {RETRY_GAP_S} s) + ttl from {fields[1]}:{fields[0]}): it could overlap the next night "
            f"and a retry after midnight would read and write the next date's prefixes")
    return problems


def simulate_entrypoint(entrypoint: str, cwd: Path) -> list[str]:
    """The argv run_job.py gets, through both shells KubeRay uses, which must agree.

    K8sJobMode: the submitter runs `bash -c "... ray job submit ... -- <entrypoint> ; ..."`
    and `ray job submit` joins its arguments with subprocess.list2cmdline; the head then runs
    that string with /bin/sh (shell=True). HTTPMode: /bin/sh on the head runs the entrypoint.
    `python` is replaced by a function that prints its arguments.
    """

    def run(shell: str, line: str) -> list[str]:
        stub = f"python() {{ {shlex.quote(sys.executable)} -I -S -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\"; }}\n"
        res = subprocess.run([shell, "-c", stub + line], cwd=cwd, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"{shell} failed on {line!r}: {res.stderr}"
        return json.loads(res.stdout)

    submitted = run("bash", entrypoint + " ;")
    on_head = run("sh", list2cmdline(["python", *submitted]))
    http_mode = run("sh", entrypoint)
    assert on_head == submitted == http_mode, (submitted, on_head, http_mode)
    return submitted


def _dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _configmaps() -> dict[str, dict]:
    return {d.name: d.body for d in docs_of("ConfigMap")}


def _validate_config_text(text: str, tmp_path: Path, overrides: list[str] = ()) -> tuple[int, JobConfig]:
    from internvl_batch.config_loader import load_config

    path = tmp_path / "job.yaml"
    path.write_text(text)
    argv = ["validate", str(path), "--config-only"]
    for o in overrides:
        argv += ["--set", o]
    return cli_main(argv), load_config(path, list(overrides))


# == tests: the documents ================================================================


def test_k8s_has_the_expected_resources():
    kinds = [d.kind for d in k8s_docs()]
    assert "RayJob" in kinds and "RayCronJob" in kinds and "ConfigMap" in kinds, kinds
    tps = {yaml.safe_load(mounted_job_config(spec, _configmaps()))["model"].get("tensor_parallel_size", 1)
           for _, spec in job_specs()}
    assert any(tp > 1 for tp in tps), "a tensor-parallel variant (e.g. 78B-AWQ, TP 4) is expected"


@pytest.mark.parametrize("doc", k8s_docs(), ids=_ids(k8s_docs()))
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
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc.name) and len(doc.name) <= limit, \
            f"{doc}: KubeRay wants a DNS-1035 label of at most {limit} characters"
    if doc.kind == "ConfigMap":
        assert body["apiVersion"] == "v1"
        data = body.get("data")
        assert isinstance(data, dict) and data, f"{doc}: data missing"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()), f"{doc}: data must map str to str"
    if doc.kind == "Secret":
        assert not body.get("data") and not body.get("stringData"), \
            f"{doc}: never commit Secret values; create the Secret with kubectl (k8s/README.md)"


def test_document_names_are_unique():
    seen = [(d.kind, d.name) for d in k8s_docs() if d.kind]
    assert len(seen) == len(set(seen)), seen


# == tests: CRD schemas ====================================================================


@pytest.mark.parametrize("doc", docs_of(*CRD_FILES), ids=_ids(docs_of(*CRD_FILES)))
def test_kuberay_resources_match_their_crd(crds, doc):
    assert crds.errors(doc.body) == []


def _first(kind: str) -> dict:
    return copy.deepcopy(docs_of(kind)[0].body)


def _template(body: dict) -> dict:
    return body["spec"] if body["kind"] == "RayJob" else body["spec"]["jobTemplate"]


def _set(body: dict, path: str, value) -> None:
    node = body
    *parents, last = path.split("/")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value


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
    "nested unknown field (pod template)": ("RayJob", f"{HEAD_CONTAINER}/resource", {"limits": {}}, "Additional properties"),
    "empty timeZone (minLength)": ("RayCronJob", "timeZone", "", "should be non-empty"),
    "schedule of the wrong type": ("RayCronJob", "schedule", 1500, "is not of type 'string'"),
    "cron template typo": ("RayCronJob", "jobTemplate/entryPoint", "python x.py", "Additional properties are not allowed"),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_crd_validation_rejects_a_broken_manifest(crds, case):
    kind, path, value, expected = BROKEN[case]
    body = _first(kind)
    assert crds.errors(body) == []
    _set(body["spec"] if kind == "RayCronJob" else _template(body), path, value)
    errors = crds.errors(body)
    assert any(expected in e for e in errors), f"{case}: expected {expected!r} in {errors}"


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_cluster_spec_is_a_valid_raycluster(crds, item):
    """KubeRay makes a RayCluster of each rayClusterSpec; it must pass the RayCluster CRD too."""
    doc, spec = item
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": doc.name},
               "spec": copy.deepcopy(spec["rayClusterSpec"])}
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
    props = crds.crd("RayCronJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for doc in docs_of("RayCronJob"):
        assert set(doc.body["spec"]) <= set(props), sorted(set(doc.body["spec"]) - set(props))
    assert {"schedule", "timeZone", "jobTemplate"} <= set(props)


# == tests: what the schema can't check ====================================================


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_entrypoint_runs_a_script_in_the_image_with_a_mounted_config(item):
    _, spec = item
    assert entrypoint_problems(spec, _configmaps(), image_file_map(_dockerfile())) == []


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_mounted_job_config_validates(item, tmp_path):
    _, spec = item
    code, cfg = _validate_config_text(mounted_job_config(spec, _configmaps()), tmp_path)
    assert code == 0
    assert cfg.runtime.ray_address == "auto", "on KubeRay the driver joins the job's cluster"
    assert cfg.preprocess.fetch.allow_local is False, "a shared cluster must not read its workers' disks"


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_gpu_workers_fit_the_job_config(item, tmp_path):
    _, spec = item
    _, cfg = _validate_config_text(mounted_job_config(spec, _configmaps()), tmp_path)
    assert gpu_problems(spec, cfg) == []


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_dev_shm_is_memory_backed(item):
    assert shm_problems(item[1]) == []


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_credentials_only_from_secrets(item):
    _, spec = item
    assert secret_problems(spec) == []
    refs = [e["valueFrom"]["secretKeyRef"] for _, c in containers_of(spec) for e in c.get("env", [])
            if "secretKeyRef" in (e.get("valueFrom") or {})]
    names = {r["name"] for r in refs}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {r["key"] for r in refs}
    readme = (K8S_DIR / "README.md").read_text()
    for name in names:
        assert f"kubectl create secret generic {name}" in readme, f"k8s/README.md must show how to create {name}"


@pytest.mark.parametrize("item", job_specs(), ids=_ids(job_specs()))
def test_job_lifecycle_is_bounded_and_retried(item):
    _, spec = item
    assert spec.get("shutdownAfterJobFinishes") is True
    assert spec.get("ttlSecondsAfterFinished", 0) > 0
    assert spec.get("activeDeadlineSeconds", 0) > 0
    assert spec.get("backoffLimit", 0) >= 1, "reruns resume, so KubeRay retries are safe and wanted"
    cluster = spec["rayClusterSpec"]
    assert cluster.get("enableInTreeAutoscaling") is True
    for g in cluster["workerGroupSpecs"]:
        assert "minReplicas" in g and "maxReplicas" in g
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    for where, c in containers_of(spec):
        if where != "autoscaler":
            res = c.get("resources") or {}
            assert {"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(res.get("limits", {})), \
                f"{where}: set CPU and memory requests and limits"


def test_no_literal_credentials_anywhere():
    files = [*K8S_DIR.rglob("*"), DOCKERFILE, DOCKERIGNORE, *(REPO / "configs").glob("*.y*ml")]
    for f in files:
        if f.is_file():
            m = LITERAL_SECRET.search(f.read_text())
            assert m is None, f"{f.relative_to(REPO)} holds what looks like a credential: {m.group(0)[:12]}..."


def test_image_and_ray_versions_match_the_pin():
    pin = ray_pin()
    base, _ = final_stage(_dockerfile())
    assert base.startswith("rayproject/ray:"), f"docker/Dockerfile must build FROM an official Ray image, not {base}"
    assert image_problems(base, pin) == []
    assert f"-{PYTHON_TAG}" in base, f"{base}: expected the {PYTHON_TAG} variant"
    assert "-gpu" in base or re.search(r"-cu\d+", base), f"{base}: expected a GPU (gpu/cuXYZ) variant"
    images = [img for d in k8s_docs() for img in _values_of("image", d.body)]
    assert images
    for image in images:
        assert image_problems(image, pin) == []
    for _, spec in job_specs():
        assert spec["rayClusterSpec"].get("rayVersion") == pin


def test_nightly_cron_never_overlaps_and_keeps_its_date():
    (cron,) = docs_of("RayCronJob")
    assert cron_problems(cron.body) == []


def test_nightly_entrypoint_reads_and_writes_that_nights_prefixes(tmp_path):
    if not (shutil.which("bash") and shutil.which("sh")):
        pytest.skip("bash and sh are needed to run the entrypoint as KubeRay does")
    (cron,) = docs_of("RayCronJob")
    spec = cron.body["spec"]["jobTemplate"]
    today = {dt.datetime.now(dt.timezone.utc).date().isoformat()}
    argv = simulate_entrypoint(spec["entrypoint"], tmp_path)
    today.add(dt.datetime.now(dt.timezone.utc).date().isoformat())
    assert argv[:2] == ["/app/jobs/run_job.py", "/etc/internvl-batch/job.yaml"]
    overrides = argv[2:][1::2]
    assert argv[2:][0::2] == ["--set"] * len(overrides)
    code, cfg = _validate_config_text(mounted_job_config(spec, _configmaps()), tmp_path, overrides)
    assert code == 0
    (night,) = {d for d in today if cfg.output.path.rstrip("/").endswith(d)}
    assert f"/{night}/" in cfg.input.path + "/"
    assert cfg.input.path.startswith("s3://") and cfg.output.path.startswith("s3://")


def test_plain_entrypoints_pass_through_both_shells_unchanged(tmp_path):
    if not (shutil.which("bash") and shutil.which("sh")):
        pytest.skip("bash and sh are needed to run the entrypoint as KubeRay does")
    for _, spec in job_specs():
        if "$" not in spec["entrypoint"]:
            assert simulate_entrypoint(spec["entrypoint"], tmp_path) == shlex.split(spec["entrypoint"])[1:]


# == tests: the checks catch what they should =============================================


def _adhoc() -> tuple[dict, JobConfig]:
    """A copy of the first RayJob's spec (a 1-GPU-per-pod, TP 1 job) and its job config."""
    for doc, spec in job_specs():
        cfg = JobConfig.model_validate(yaml.safe_load(mounted_job_config(spec, _configmaps())))
        if doc.kind == "RayJob" and cfg.model.tensor_parallel_size == 1:
            return copy.deepcopy(spec), cfg
    raise AssertionError("the checks below need a RayJob with tensor_parallel_size 1 in k8s/")


def _with(cfg: JobConfig, **sections) -> JobConfig:
    data = cfg.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return JobConfig.model_validate(data)


def test_gpu_check_catches_mismatches():
    spec, cfg = _adhoc()  # 1 GPU per worker pod, tensor_parallel_size 1
    assert any("multiple of" in p for p in gpu_problems(spec, _with(cfg, model={"tensor_parallel_size": 2})))
    assert any("GPUs; the worker groups" in p
               for p in gpu_problems(spec, _with(cfg, runtime={"replicas": cfg.runtime.replicas + 1})))
    assert any("CPUs" in p for p in gpu_problems(spec, _with(cfg, runtime={"cpu_workers": 100000})))
    assert any("use_gpu" in p for p in gpu_problems(spec, _with(cfg, runtime={"use_gpu": False})))

    def worker(s):
        return s["rayClusterSpec"]["workerGroupSpecs"][0]

    broken = copy.deepcopy(spec)
    worker(broken)["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = 2
    assert any("request" in p for p in gpu_problems(broken, cfg))
    broken = copy.deepcopy(spec)
    worker(broken)["maxReplicas"] = worker(broken)["replicas"] - 1
    assert any("within" in p for p in gpu_problems(broken, cfg))
    broken = copy.deepcopy(spec)
    del worker(broken)["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    del worker(broken)["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    assert any("no worker group" in p for p in gpu_problems(broken, cfg))
    head = copy.deepcopy(spec)
    head["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert any("head" in p for p in gpu_problems(head, cfg))


def test_entrypoint_check_catches_missing_files_and_mounts():
    spec, _ = _adhoc()
    files, cms = image_file_map(_dockerfile()), _configmaps()
    for bad in ("python /app/jobs/no_such_job.py /etc/internvl-batch/job.yaml",
                "python /opt/elsewhere/run_job.py /etc/internvl-batch/job.yaml",
                "python /app/jobs/run_job.py /etc/not-mounted/job.yaml",
                "python /app/jobs/run_job.py /etc/internvl-batch/other.yaml",
                "python /app/jobs/run_job.py /etc/internvl-batch/job.yaml --oops",
                "python /app/jobs/run_job.py /etc/internvl-batch/job.yaml # comment"):
        assert entrypoint_problems({**spec, "entrypoint": bad}, cms, files), bad
    assert entrypoint_problems(spec, {}, files)  # the ConfigMap is not in k8s/
    assert entrypoint_problems(spec, cms, {})  # the Dockerfile copies nothing


def test_secret_check_catches_inline_credentials():
    spec, _ = _adhoc()
    env = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "AWS_SECRET_ACCESS_KEY"]
    env.append({"name": "AWS_SECRET_ACCESS_KEY", "value": "not-so-secret"})
    assert secret_problems(spec)
    env[-1] = {"name": "SOME_SETTING", "value": "AKIA" + "ABCDEFGHIJKLMNOP"}
    assert secret_problems(spec)
    env[-1] = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x"}}}
    assert secret_problems(spec)
    assert LITERAL_SECRET.search("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG+bPxRfiCY" + "0123456789")
    assert not LITERAL_SECRET.search("--from-literal=AWS_SECRET_ACCESS_KEY=... AWS_ACCESS_KEY_ID")


def test_image_check_catches_other_ray_versions():
    pin = ray_pin()
    assert image_problems(f"rayproject/ray:{pin}-py311-gpu", pin) == []
    assert image_problems(f"registry.example.com/ml/internvl-batch:0.1.0-ray{pin}", pin) == []
    assert image_problems("rayproject/ray:2.59.0-py311-gpu", pin)
    assert image_problems("rayproject/ray-ml:latest-gpu", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0", pin)
    assert image_problems("registry.example.com/ml/internvl-batch:0.1.0-ray2.59.0", pin)
    assert image_problems("registry.example.com:5000/ml/internvl-batch", pin)


def test_cron_check_catches_overlap_and_date_risks():
    (cron,) = docs_of("RayCronJob")
    for path, value in (("jobTemplate/activeDeadlineSeconds", 86400), ("jobTemplate/activeDeadlineSeconds", KeyError),
                        ("jobTemplate/backoffLimit", 10), ("schedule", "15 22 * * *"), ("schedule", "0 */6 * * *"),
                        ("timeZone", "Europe/Berlin"), ("timeZone", "Not/AZone"),
                        ("jobTemplate/shutdownAfterJobFinishes", False),
                        ("jobTemplate/entrypoint", "python /app/jobs/run_job.py /c/job.yaml --set output.path=s3://b/$(date +%F)")):
        body = copy.deepcopy(cron.body)
        _set(body["spec"], path, value)
        assert cron_problems(body), (path, value)


def test_shm_check_catches_disk_backed_or_oversized_shm():
    spec, _ = _adhoc()
    pod = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    dshm["emptyDir"]["sizeLimit"] = "10Ti"
    assert shm_problems(spec)
    dshm["emptyDir"]["sizeLimit"] = "1Gi"
    assert any("/tmp" in p for p in shm_problems(spec))
    dshm["emptyDir"] = {}
    assert shm_problems(spec)
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    assert shm_problems(spec)


def test_quantities():
    assert _quantity("16Gi") == 16 * 2**30 and _quantity("500m") == 0.5 and _quantity(4) == 4.0
    assert _quantity("1e3") == 1000 and _quantity("2G") == 2e9
    with pytest.raises(ValueError):
        _quantity("16GB")


# == tests: the image ======================================================================


def test_dockerfile_copies_the_project_and_installs_the_gpu_extra():
    instructions = _dockerfile()
    files = image_file_map(instructions)
    needed = ["pyproject.toml", "jobs/run_job.py", "internvl_batch/__init__.py", "internvl_batch/cli.py",
              *[str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml")]]
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    if readme:
        needed.append(readme.group(1))  # setuptools reads it when building the package
    copied = set(files.values())
    for path in needed:
        assert path in copied or any(path.startswith(c.rstrip("/") + "/") for c in copied), \
            f"docker/Dockerfile does not COPY {path}"
    assert repo_path_in_image("/app/jobs/run_job.py", files) == "jobs/run_job.py"
    _, stage = final_stage(instructions)
    runs = " ".join(args for instr, args in stage if instr == "RUN")
    assert re.search(r"pip install [^&]*['\"]?\.\[gpu\]", runs), "the image must pip install '.[gpu]'"


def test_dockerignore_keeps_what_the_image_needs():
    patterns = DOCKERIGNORE.read_text().splitlines()
    files = image_file_map(_dockerfile())
    needed = {"pyproject.toml", "jobs/run_job.py", "internvl_batch/__init__.py", "internvl_batch/config.py",
              *(src for src in files.values() if (REPO / src).is_file())}
    for path in needed:
        assert not dockerignored(path, patterns), f".dockerignore excludes {path}, which the image needs"
    for path in (".venv/bin/python", ".cache/tiny/config.json", ".git/HEAD", "internvl_batch/__pycache__/x.pyc"):
        assert dockerignored(path, patterns), f".dockerignore should keep {path} out of the build context"
    assert dockerignored("jobs/run_job.py", [*patterns, "jobs"])  # the check itself works


def test_no_credentials_in_the_image():
    _, stage = final_stage(_dockerfile())
    for instr, args in stage:
        if instr in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            for name in names:
                assert not (CREDENTIAL_ENV.search(name) or name.startswith("AWS_")), \
                    f"docker/Dockerfile sets {name}: credentials come from Secrets at run time"
        if instr in ("COPY", "ADD"):
            assert not re.search(r"\.aws|credentials|\.json\b|\.pem\b|\.env\b", args), f"COPY of a secret? {args}"


# == tests: the GPU job configs ==============================================================


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_validate(name, tmp_path):
    path = REPO / name
    assert cli_main(["validate", str(path), "--config-only"]) == 0
    _, cfg = _validate_config_text(path.read_text(), tmp_path)
    assert cfg.model.path == "OpenGVLab/InternVL2_5-8B"
    assert cfg.model.dtype == "bfloat16" and cfg.runtime.use_gpu
    assert cfg.runtime.engine_batch_size >= cfg.model.max_num_seqs
    for section in (cfg.input.storage_options, cfg.output.storage_options, cfg.model.storage_options,
                    *cfg.preprocess.fetch.storage_options.values()):
        keys = {k.lower() for k in _all_keys(section)}
        assert not keys & {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key"}, \
            f"{name}: credentials never go in config files"


def _values_of(key: str, node) -> list:
    if isinstance(node, dict):
        return [*([node[key]] if isinstance(node.get(key), str) else []),
                *(x for v in node.values() for x in _values_of(key, v))]
    if isinstance(node, list):
        return [x for v in node for x in _values_of(key, v)]
    return []


def _all_keys(node) -> list[str]:
    if isinstance(node, dict):
        return [*node, *(k for v in node.values() for k in _all_keys(v))]
    if isinstance(node, list):
        return [k for v in node for k in _all_keys(v)]
    return []


def test_nightly_config_captions_images_and_videos(tmp_path):
    _, cfg = _validate_config_text((REPO / "configs/nightly-caption.yaml").read_text(), tmp_path)
    assert {t.preset for t in cfg.task} == {"short_caption", "detailed_caption"}
    assert cfg.input.image_column and cfg.input.video_column


def test_label_vqa_config_has_a_json_schema_task_and_a_row_question_task(tmp_path):
    _, cfg = _validate_config_text((REPO / "configs/label-vqa.yaml").read_text(), tmp_path)
    schema_tasks = [t for t in cfg.task if t.sampling.json_schema]
    assert schema_tasks and all(t.sampling.json_schema.get("type") == "object" for t in schema_tasks)
    assert any(t.use_row_question for t in cfg.task)
