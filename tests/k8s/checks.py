"""Checks a CRD schema can't express; each returns a list of problems (empty: all is well)."""

from __future__ import annotations

import posixpath
import re

from internvl_batch.config import JobConfig
from tests.k8s.entrypoint_run import ENTRYPOINT_COMMAND, console_scripts
from tests.k8s.manifests import (
    configmap_key,
    containers_of,
    entrypoint_args,
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
    """The entrypoint runs the image's internvl-rayjob on a job config from a mounted ConfigMap.
    `files`: what the image holds (path in the image -> repo path); the project must be in it."""
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
    usage = f"`{ENTRYPOINT_COMMAND} [options] CONFIG [--set k=v ...]`"
    if not argv or argv[0] != ENTRYPOINT_COMMAND:
        return [*problems, f"expected {usage}, got {entrypoint!r}"]
    if ENTRYPOINT_COMMAND not in console_scripts():
        problems.append(f"pyproject.toml declares no console script {ENTRYPOINT_COMMAND}: the image would not have it")
    if not any(src == "internvl_batch" for src in files.values()):
        problems.append("docker/Dockerfile does not copy the package (internvl_batch/) that provides the entrypoint")
    try:
        args = entrypoint_args(entrypoint)
    except ValueError as e:
        return [*problems, f"expected {usage}: {e}"]
    if any("=" not in s for s in args.set):
        problems.append(f"--set values must be key=value: {args.set}")
    config = args.config
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


SHM_KEPT_GPU = 4 * 2**30  # /dev/shm left to vLLM and NCCL beside Ray's object store on a GPU pod
SHM_KEPT_CPU = 1 * 2**30
PROCESS_MEMORY_FLOOR = {"gpu": 32 * 2**30, "head": 16 * 2**30}  # beside /dev/shm, inside the memory limit


def shm_problems(spec: dict) -> list[str]:
    """Every Ray pod mounts a memory-backed emptyDir at /dev/shm, smaller than its memory limit (which
    counts it) by room for the processes, and sets Ray's object store below it explicitly, leaving
    vLLM and NCCL their share; spilled objects go to a volume of their own."""
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
            shm, mem = quantity(ed["sizeLimit"]), quantity(limit)
            kind = "gpu" if gpus(ray) else "head"
            if mem - shm < PROCESS_MEMORY_FLOOR[kind]:
                problems.append(
                    f"{where}: memory limit {limit} - /dev/shm {ed['sizeLimit']} leaves the processes less than "
                    f"{PROCESS_MEMORY_FLOOR[kind] / 2**30:.0f} GiB (/dev/shm pages count in the limit)"
                )
            params = _start_params(spec, where)
            store = params.get("object-store-memory")
            kept = SHM_KEPT_GPU if gpus(ray) else SHM_KEPT_CPU
            if store is None:
                problems.append(
                    f"{where}: set rayStartParams object-store-memory: Ray's default takes ~95 % of /dev/shm, "
                    f"leaving vLLM and NCCL almost nothing"
                )
            elif int(store) > shm - kept:
                problems.append(
                    f"{where}: object-store-memory {int(store) / 2**30:.1f} GiB leaves less than "
                    f"{kept / 2**30:.0f} GiB of /dev/shm {ed['sizeLimit']} to vLLM / NCCL"
                )
            spill = params.get("object-spilling-directory")
            spill_vol = next((m for m in ray.get("volumeMounts", []) if spill and m["mountPath"] == spill), None)
            if spill_vol is None or "emptyDir" not in (vols.get(spill_vol["name"]) or {}):
                problems.append(f"{where}: set object-spilling-directory to an emptyDir volume the pod mounts")
            elif "sizeLimit" not in vols[spill_vol["name"]]["emptyDir"]:
                problems.append(f"{where}: the spill volume needs a sizeLimit (inside the ephemeral-storage request)")
            elif quantity(vols[spill_vol["name"]]["emptyDir"]["sizeLimit"]) > quantity(
                resource(ray, "requests", "ephemeral-storage", 0)
            ):
                problems.append(f"{where}: the spill volume is larger than the ephemeral-storage request")
    return problems


def _start_params(spec: dict, where: str) -> dict:
    cluster = spec["rayClusterSpec"]
    if where == "head":
        return cluster["headGroupSpec"].get("rayStartParams") or {}
    name = where.removeprefix("worker group ")
    return next(g.get("rayStartParams") or {} for g in cluster["workerGroupSpecs"] if g["groupName"] == name)


CREDENTIAL_ENV = re.compile(r"ACCESS_KEY|SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|CREDENTIAL", re.IGNORECASE)
NOT_SECRET_ENV = {"GOOGLE_APPLICATION_CREDENTIALS"}  # a path to a key file mounted from a Secret
LITERAL_SECRET = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key ids
    r"|aws_secret_access_key\W{1,4}[A-Za-z0-9/+]{40}"  # an AWS secret key (40 characters) as a value
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face tokens
    re.IGNORECASE,
)


SERVICE_ACCOUNT = "internvl-batch"


def secret_problems(spec: dict) -> list[str]:
    """Credentials: the pods run as the workload-identity ServiceAccount; a Secret is an opt-in
    (every secretKeyRef optional, so pods start without it), never inline values."""
    problems = []
    for where, pod in pod_specs(spec):
        if pod.get("serviceAccountName") != SERVICE_ACCOUNT:
            problems.append(f"{where}: serviceAccountName must be {SERVICE_ACCOUNT} (workload identity)")
    for where, c in containers_of(spec):
        for e in c.get("env", []):
            name, src = e["name"], e.get("valueFrom") or {}
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                if not ref.get("name") or not ref.get("key"):
                    problems.append(f"{where}: env {name}: secretKeyRef needs name and key")
                if ref.get("optional") is not True:
                    problems.append(f"{where}: env {name}: the Secret is opt-in: secretKeyRef needs optional: true")
            elif CREDENTIAL_ENV.search(name) and name not in NOT_SECRET_ENV:
                problems.append(f"{where}: env {name} looks like a credential; take it from a Secret (secretKeyRef)")
            if "value" in e and LITERAL_SECRET.search(str(e["value"])):
                problems.append(f"{where}: env {name} holds a literal credential")
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef:
                problems.append(f"{where}: envFrom configMapRef; credentials belong in a Secret (secretRef)")
    return problems


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def pull_policy_problems(spec: dict) -> list[str]:
    """One image, one pull policy: a tag is mutable, so it is pulled Always (a cached image costs a
    manifest check); an image pinned by digest (the release step) may be IfNotPresent."""
    problems, seen = [], set()
    containers = [(w, c) for w, c in containers_of(spec) if w != "autoscaler"]
    autoscaler = (spec.get("rayClusterSpec") or {}).get("autoscalerOptions")
    for where, c in containers:
        seen.add((c.get("image"), c.get("imagePullPolicy")))
        policy, pinned = c.get("imagePullPolicy"), bool(DIGEST.search(c.get("image", "")))
        if policy not in (("Always", "IfNotPresent") if pinned else ("Always",)):
            problems.append(
                f"{where}: imagePullPolicy {policy!r} with {'a digest' if pinned else 'a tag'}: a tag is mutable, "
                f"use Always (or pin the digest, k8s/README.md 'Release')"
            )
    if autoscaler is not None and autoscaler.get("imagePullPolicy") not in {p for _, p in seen}:
        problems.append("autoscalerOptions.imagePullPolicy must match the Ray containers' (it runs their image)")
    if len(seen) > 1:
        problems.append(f"the containers disagree on image / pull policy: {sorted(map(str, seen))}")
    return problems


def image_problems(image: str, pin: str) -> list[str]:
    """The image's Ray is the pinned Ray: rayproject/ray:<pin>-..., or our image tagged ...-ray<pin>."""
    image = DIGEST.sub("", image)
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
    """A daily schedule whose RayJobs name their night from the schedule (not the clock), share one
    output lease, wait for a late manifest within their deadline, free their GPUs when done, are
    pruned after days, and end before the next tick."""
    spec, problems = cron["spec"], []
    jt = spec["jobTemplate"]
    fields = str(spec.get("schedule", "")).split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()) or fields[2:] != ["*", "*", "*"]:
        return [f"schedule {spec.get('schedule')!r}: expected a daily 'M H * * *'"]
    start = int(fields[1]) * 3600 + int(fields[0]) * 60
    if "timeZone" in spec:
        problems.append("timeZone exists from KubeRay v1.7.0 on (v1.6.2 rejects it): the night is a UTC date anyway")
    try:
        args = entrypoint_args(jt.get("entrypoint", ""))
    except ValueError as e:
        return [*problems, f"nightly entrypoint: {e}"]
    if args.days_before_schedule is None:
        problems.append(
            "the nightly entrypoint must take its night from the schedule: internvl-rayjob --days-before-schedule N "
            "(--days-ago counts from the clock: a late start or a catch-up would name the wrong night)"
        )
    if args.catch_up < 1:
        problems.append("--catch-up must be >= 1: after an outage the missed nights are processed, oldest first")
    sets = dict(a.split("=", 1) for a in args.set if "=" in a)
    for key in ("input.path", "output.path"):
        if "{night}" not in sets.get(key, ""):
            problems.append(f"--set {key}=... must contain {{night}}: each night reads and writes its own prefix")
    output = sets.get("output.path", "")
    if not args.lease or "{night}" in args.lease:
        problems.append("--lease must name one object for the whole schedule (no {night}): nights run one at a time")
    elif args.lease.split("://")[0] != output.split("://")[0]:
        problems.append(f"--lease {args.lease} must live in the output's store ({output})")
    deadline = jt.get("activeDeadlineSeconds")
    if not deadline:
        return [*problems, "jobTemplate.activeDeadlineSeconds must bound every attempt (no concurrencyPolicy)"]
    if not 0 < args.manifest_wait <= deadline / 4:
        problems.append(
            f"--manifest-wait {args.manifest_wait:g} s: wait for a late manifest, within a quarter of the deadline"
        )
    teardown = _cleanup_problems(jt, problems)
    attempts = jt.get("backoffLimit", 0) + 1
    end = start + attempts * (deadline + RETRY_GAP_S) + teardown
    if end >= 24 * 3600:
        problems.append(
            f"a night may run until {end / 3600:.1f} h after its tick ({attempts} attempts x "
            f"({deadline} s + {RETRY_GAP_S} s) + teardown from {fields[1]}:{fields[0]}): it could overlap the next night"
        )
    return problems


def _cleanup_problems(jt: dict, problems: list[str]) -> float:
    """The cluster goes when the night ends and the RayJob some days later; returns the teardown delay (s)."""
    rules = (jt.get("deletionStrategy") or {}).get("deletionRules") or []
    if not rules:
        if not jt.get("shutdownAfterJobFinishes"):
            problems.append(
                "jobTemplate: shutdownAfterJobFinishes or deletionRules must delete the cluster (it holds GPUs)"
            )
        problems.append("jobTemplate: deletionRules with DeleteSelf must prune old RayJobs (they pile up otherwise)")
        return jt.get("ttlSecondsAfterFinished", 0)
    by = {}
    for r in rules:
        cond = r["condition"]
        by[(r["policy"], cond.get("jobStatus") or f"deployment {cond.get('jobDeploymentStatus')}")] = cond.get(
            "ttlSeconds", 0
        )
    ends = ("SUCCEEDED", "FAILED", "deployment Failed")
    for end in ends:
        if ("DeleteCluster", end) not in by:
            problems.append(f"deletionRules: no DeleteCluster when {end}: that night's cluster would keep its GPUs")
        if ("DeleteSelf", end) not in by:
            problems.append(f"deletionRules: no DeleteSelf when {end}: those RayJobs would pile up")
        elif by[("DeleteSelf", end)] < 86400:
            problems.append(f"deletionRules: DeleteSelf when {end} after < 1 day leaves no time to read the failure")
    return max((t for (policy, _), t in by.items() if policy == "DeleteCluster"), default=0)
