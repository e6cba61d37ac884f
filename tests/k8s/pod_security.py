"""The Pod Security Standards' "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
as the built-in admission controller enforces it, policy version `latest` in Kubernetes 1.30-1.34), checked on a
pod spec; each rule as the standard words it, baseline's included (restricted is baseline plus its own).

The containers checked are the pod's init and regular containers plus those KubeRay injects into
the pods it makes from a template (`extra`): the autoscaler sidecar of the head (its securityContext
is `autoscalerOptions.securityContext`) and the `wait-gcs-ready` init container of the workers (it
copies the Ray container's securityContext; common/pod.go in v1.6.2 and v1.7.0).
"""

from __future__ import annotations

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}  # fmt: skip
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                         "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}  # fmt: skip
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}  # fmt: skip


def restricted_problems(pod: dict, extra: list[tuple[str, dict]] = ()) -> list[str]:
    """What keeps `pod` (a PodSpec) from being admitted in a namespace enforcing "restricted"."""
    problems = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field}: true (baseline: host namespaces)")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"volume {v['name']}: hostPath (baseline)")
        elif not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {v['name']}: {sorted(kinds)} is not a restricted volume type")
    for s in psc.get("sysctls", []):
        if s.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {s.get('name')} (baseline)")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        problems.append("pod seccompProfile Unconfined")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser: 0")
    containers = [("init container " + c["name"], c) for c in pod.get("initContainers", [])]
    containers += [("container " + c["name"], c) for c in pod.get("containers", [])]
    containers += [(where, {"securityContext": sc}) for where, sc in extra]
    for where, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged (baseline)")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        if not (sc.get("runAsNonRoot") if "runAsNonRoot" in sc else psc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot must be true (in the pod's or the container's securityContext)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser: 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount (baseline)")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']} (baseline)")
    return problems


def kuberay_injected(spec: dict, group: str, pod: dict) -> list[tuple[str, dict]]:
    """(what, securityContext) of the containers KubeRay adds to the pods of `group` ("head" or a worker group)."""
    ray = pod["containers"][0].get("securityContext") or {}
    if group == "head":
        cluster = spec.get("rayClusterSpec") or spec
        if cluster.get("enableInTreeAutoscaling"):
            return [("autoscaler sidecar", (cluster.get("autoscalerOptions") or {}).get("securityContext") or {})]
        return []
    return [("init container wait-gcs-ready (KubeRay's)", ray)]
