"""Checks a CRD schema can't express; each returns a list of problems (empty: all is well)."""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import zoneinfo

from internvl_batch.config import JobConfig
from tests.k8s.dockerfile import repo_path_in_image
from tests.k8s.entrypoint_run import ENTRYPOINT_COMMAND, ENTRYPOINT_IN_IMAGE
from tests.k8s.manifests import (
    REPO,
    configmap_key,
    containers_of,
    gpus,
    head_pod,
    pod_specs,
    quantity,
    resource,
    static_argv,
    volumes_mounted_at,
)

RETRY_GAP_S = 900  # allowance per attempt of a RayJob for cluster teardown and a new submission


def entrypoint_problems(spec: dict, configmaps: dict[str, dict], files: dict[str, str]) -> list[str]:
    """The entrypoint runs the image's internvl-rayjob on a job config from a mounted ConfigMap."""
    entrypoint = spec.get("entrypoint", "")
    problems = []
    if "\n" in entrypoint or "#" in entrypoint or "\\" in entrypoint or "$" in entrypoint:
        problems.append(
            "the entrypoint must be one line without '#', '\\' or '$' (a shell runs it; dates come from --days-ago)"
        )
    try:
        argv = static_argv(entrypoint)
    except ValueError as e:
        return [*problems, f"entrypoint does not parse as a shell command: {e}"]
    usage = f"`{ENTRYPOINT_COMMAND} [--days-ago N | --night DATE] CONFIG [--set k=v ...]`"
    if not argv or argv[0] != ENTRYPOINT_COMMAND:
        return [*problems, f"expected {usage}, got {entrypoint!r}"]
    src = repo_path_in_image(ENTRYPOINT_IN_IMAGE, files)
    if src is None:
        problems.append(f"{ENTRYPOINT_IN_IMAGE} is not installed by docker/Dockerfile")
    elif not (REPO / src).is_file():
        problems.append(f"{ENTRYPOINT_IN_IMAGE} comes from {src}, which does not exist in the repo")
    rest = argv[1:]
    if rest[:1] in (["--days-ago"], ["--night"]):
        rest = rest[2:]
    if not rest or rest[0].startswith("-"):
        return [*problems, f"expected {usage}, got {entrypoint!r}"]
    config, rest = rest[0], rest[1:]
    while rest:
        if rest[0] != "--set" or len(rest) < 2 or "=" not in rest[1]:
            problems.append(f"unexpected entrypoint arguments {rest}")
            break
        rest = rest[2:]
    directory = posixpath.dirname(config)
    mounted = volumes_mounted_at(spec, directory)
    if not mounted:
        return [*problems, f"the job config {config} is not under a volume mounted in the head's Ray container"]
    cm_ref = mounted[0].get("configMap")
    if not cm_ref:
        return [*problems, f"the volume mounted at {directory} is not a ConfigMap"]
    key = configmap_key(cm_ref, posixpath.basename(config))
    cm = configmaps.get(cm_ref["name"])
    if cm is None:
        problems.append(f"ConfigMap {cm_ref['name']!r} (mounted at {directory}) is not in k8s/")
    elif key not in (cm.get("data") or {}):
        problems.append(f"ConfigMap {cm_ref['name']!r} has no key {key!r}")
    return problems


def gpu_problems(spec: dict, cfg: JobConfig) -> list[str]:
    """GPU workers fit the config: whole replicas per pod, enough GPUs and CPUs for the job."""
    tp, rt = cfg.model.tensor_parallel_size, cfg.runtime
    problems = []
    if not rt.use_gpu:
        problems.append("runtime.use_gpu is false on a GPU cluster")
    head = head_pod(spec)["containers"][0]
    if gpus(head) or gpus(head, "requests"):
        problems.append("the head asks for GPUs; replicas run on the GPU worker groups")
    total_gpus = total_cpus = 0.0
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        name, ray, params = g["groupName"], g["template"]["spec"]["containers"][0], g.get("rayStartParams") or {}
        lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1), g.get("replicas", 0)
        if not lo <= n <= hi:
            problems.append(f"{name}: replicas={n} is not within [minReplicas={lo}, maxReplicas={hi}]")
        pods = hi * g.get("numOfHosts", 1)
        limit = gpus(ray)
        requested = resource(ray, "requests", "nvidia.com/gpu")
        if requested is not None and quantity(requested) != limit:
            problems.append(f"{name}: nvidia.com/gpu request {requested} != limit {limit:g}")
        if "num-gpus" in params and quantity(params["num-gpus"]) != limit:
            problems.append(f"{name}: rayStartParams num-gpus != the nvidia.com/gpu limit")
        total_cpus += pods * quantity(params.get("num-cpus") or resource(ray, "limits", "cpu", 0))
        if limit:
            if limit % tp:
                problems.append(
                    f"{name}: {limit:g} GPUs per pod is not a multiple of "
                    f"model.tensor_parallel_size={tp} (a replica's GPUs must share a pod)"
                )
            total_gpus += pods * limit
    if not total_gpus:
        problems.append("no worker group has nvidia.com/gpu limits")
    elif rt.replicas * tp > total_gpus:
        problems.append(
            f"runtime.replicas={rt.replicas} x tensor_parallel_size={tp} needs "
            f"{rt.replicas * tp} GPUs; the worker groups have at most {total_gpus:g}"
        )
    need_cpus = rt.cpu_workers * rt.cpus_per_worker + rt.replicas * rt.engine_cpus
    if need_cpus > total_cpus:
        problems.append(
            f"the job's actors need {need_cpus:g} CPUs (cpu_workers x cpus_per_worker + "
            f"replicas x engine_cpus); the worker groups have at most {total_cpus:g}"
        )
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
        limit = resource(ray, "limits", "memory")
        if limit is None or "sizeLimit" not in ed:
            problems.append(f"{where}: set the memory limit and the /dev/shm sizeLimit (it counts against it)")
        elif quantity(ed["sizeLimit"]) >= quantity(limit):
            problems.append(f"{where}: /dev/shm sizeLimit {ed['sizeLimit']} >= memory limit {limit}")
        else:
            # Ray's default object store: 30% of memory, capped at 95% of /dev/shm but not below
            # 10 GB; a store larger than /dev/shm moves to /tmp (slow disk).
            shm, mem = quantity(ed["sizeLimit"]), quantity(limit)
            store = min(0.3 * mem, max(10e9, 0.95 * shm))
            if store > shm:
                problems.append(
                    f"{where}: /dev/shm {ed['sizeLimit']} is smaller than Ray's object store "
                    f"({store / 2**30:.1f} GiB for {limit}); Ray would fall back to /tmp"
                )
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
    """A daily UTC schedule naming its night explicitly, whose one attempt ends the same UTC day,
    before the next night starts (so every attempt and resubmission computes the same {night})."""
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
    if zone is None or not all(zone.utcoffset(dt.datetime(2025, m, 1)) == dt.timedelta(0) for m in (1, 7)):
        problems.append(f"timeZone {tz!r}: --days-ago counts UTC days; schedule in UTC (Etc/UTC) too")
    argv = static_argv(jt.get("entrypoint", ""))
    if argv[1:2] != ["--days-ago"] or not argv[2:3] or not argv[2].isdigit():
        problems.append("the nightly entrypoint must name its night explicitly: internvl-rayjob --days-ago N ...")
    sets = dict(a.split("=", 1) for a in argv if "=" in a)
    for key in ("input.path", "output.path"):
        if "{night}" not in sets.get(key, ""):
            problems.append(f"--set {key}=... must contain {{night}}: each night reads and writes its own prefix")
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
            f"and an attempt after midnight would compute the next date for {{night}}"
        )
    return problems
