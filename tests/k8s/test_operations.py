"""Running nights unattended: the PrometheusRule alerts on a failed night, an overrun, no progress and
engine restarts; the PodMonitor scrapes the port the Ray containers expose; the Grafana dashboard is
valid JSON whose panels read only metrics the job exports (observe/metrics.py) and shows them all;
a PodDisruptionBudget covers the heads. Each check fails on a copy broken that way."""

from __future__ import annotations

import copy
import json
import re

import pytest

from internvl_batch.observe.metrics import METRICS
from tests.k8s.manifests import K8S_DIR, docs_of, job_specs

DASHBOARD = K8S_DIR / "grafana-dashboard.json"
# The KubeRay operator's RayJob metrics (ray-operator/controllers/ray/metrics/ray_job_metrics.go, v1.6.2 = v1.7.0).
KUBERAY_METRICS = {"kuberay_job_info", "kuberay_job_deployment_status", "kuberay_job_execution_duration_seconds"}
ALERTS = {"InternVLNightFailed", "InternVLNightOverran", "InternVLNoProgress", "InternVLEngineRestarts"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "min", "avg", "histogram_quantile", "le", "without", "on",
                "count", "label_values", "absent", "and", "or", "unless", "offset", "bool", "time"}  # fmt: skip


def exported() -> set[str]:
    """Every series name Prometheus shows for the job's metrics (histograms: _bucket, _count, _sum)."""
    names = set()
    for m in METRICS:
        names |= (
            {f"{m.exported}_bucket", f"{m.exported}_count", f"{m.exported}_sum"}
            if m.kind == "histogram"
            else {m.exported}
        )
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers not inside {...} or quotes, not keywords/labels)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS and not w.startswith("$")}


def dashboard_problems(dash: dict) -> list[str]:
    problems, used = [], set()
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []):
            names = metric_names(t.get("expr", ""))
            unknown = names - exported()
            if unknown:
                problems.append(f"panel {panel.get('title')!r}: {sorted(unknown)} is not a metric the job exports")
            used |= names
    for var in (dash.get("templating") or {}).get("list", []):
        q = var.get("query")
        if isinstance(q, str) and q.startswith("label_values("):
            name = q[len("label_values(") :].split(",")[0].strip()
            if name not in exported():
                problems.append(f"variable {var['name']}: {name} is not a metric the job exports")
    missing = {m.exported for m in METRICS} - {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    if missing:
        problems.append(f"no panel shows {sorted(missing)}")
    return problems


def rule_problems(rule: dict) -> list[str]:
    problems, alerts = [], {}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            alerts[r.get("alert")] = r
            for name in metric_names(r["expr"]):
                if name.startswith("kuberay_") and name not in KUBERAY_METRICS:
                    problems.append(f"{r.get('alert')}: {name} is not a KubeRay operator metric")
                elif not name.startswith("kuberay_") and name not in exported():
                    problems.append(f"{r.get('alert')}: {name} is not a metric the job exports")
    for name in sorted(ALERTS - set(alerts)):
        problems.append(f"no alert {name}")
    night = alerts.get("InternVLNightFailed", {}).get("expr", "")
    if 'deployment_status="Failed"' not in night or "internvl-nightly-caption-" not in night:
        problems.append("InternVLNightFailed must watch the nightly RayJobs' Failed deployment status")
    if "for" not in alerts.get("InternVLNightOverran", {}):
        problems.append("InternVLNightOverran needs a `for:` (how long a night may run)")
    return problems


def pod_monitor_problems(monitor: dict, specs: list[dict]) -> list[str]:
    problems = []
    sel = monitor["spec"]["selector"].get("matchLabels", {})
    ports = {e.get("port") for e in monitor["spec"]["podMetricsEndpoints"]}
    for spec in specs:
        cluster = spec["rayClusterSpec"]
        for t in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
            if not set(sel.items()) <= set(t["metadata"]["labels"].items()):
                problems.append(f"the PodMonitor does not select pods labelled {t['metadata']['labels']}")
            named = {p.get("name"): p.get("containerPort") for p in t["spec"]["containers"][0].get("ports", [])}
            if not ports & set(named) or named.get("metrics") != 8080:
                problems.append(f"a Ray container exposes no port {sorted(ports)} (Ray's metrics agent, 8080)")
    return problems


def _one(kind: str) -> dict:
    (doc,) = [copy.deepcopy(d.body) for d in docs_of(kind)]
    return doc


def test_the_dashboard_reads_only_exported_metrics_and_shows_them_all():
    assert dashboard_problems(json.loads(DASHBOARD.read_text())) == []


def test_dashboard_check_catches_a_made_up_metric_or_a_missing_one():
    dash = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(dash)
    broken["panels"][0]["targets"][0]["expr"] = "sum(rate(ray_internvl_rows_processed_total[5m]))"
    problems = dashboard_problems(broken)
    assert any("ray_internvl_rows_processed_total" in p for p in problems)
    assert any("no panel shows ['ray_internvl_rows_total']" in p for p in problems)
    broken = copy.deepcopy(dash)
    broken["templating"]["list"][1]["query"] = "label_values(ray_node_cpu, ray_io_cluster)"
    assert any("variable cluster" in p for p in dashboard_problems(broken))


def test_alerts_cover_failed_overrun_stalled_nights_and_engine_restarts():
    assert rule_problems(_one("PrometheusRule")) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rules: rules.pop(0), "no alert InternVLNightFailed"),
        (lambda rules: rules[1].pop("for"), "for:"),
        (lambda rules: rules[2].update(expr="sum(rate(ray_internvl_stage_rows[10m])) == 0"), "ray_internvl_stage_rows"),
        (
            lambda rules: rules[0].update(expr='kuberay_rayjob_status{status="Failed"} == 1'),
            "not a KubeRay operator metric",
        ),  # fmt: skip
    ],
)
def test_rule_check_catches_missing_alerts_and_wrong_names(edit, expected):
    rule = _one("PrometheusRule")
    edit(rule["spec"]["groups"][0]["rules"])
    assert any(expected in p for p in rule_problems(rule)), rule_problems(rule)


def test_the_pod_monitor_scrapes_every_ray_pod_on_its_metrics_port():
    specs = [spec for _, spec in job_specs()]
    monitor = _one("PodMonitor")
    assert pod_monitor_problems(monitor, specs) == []
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = "http-metrics"
    assert pod_monitor_problems(monitor, specs)
    monitor = _one("PodMonitor")
    monitor["spec"]["selector"]["matchLabels"] = {"app": "ray"}
    assert pod_monitor_problems(monitor, specs)
    broken = copy.deepcopy(specs[0])
    broken["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("ports")
    assert pod_monitor_problems(_one("PodMonitor"), [broken])


def disruption_problems(pdb: dict, specs: list[dict]) -> list[str]:
    """The budget blocks voluntary evictions of every head and of no GPU worker (their batches are redone)."""
    sel, problems = set(pdb["spec"]["selector"].get("matchLabels", {}).items()), []
    if pdb["spec"].get("maxUnavailable") != 0:
        problems.append("maxUnavailable must be 0: a drain would end the run")
    for spec in specs:
        cluster = spec["rayClusterSpec"]
        head = {**cluster["headGroupSpec"]["template"]["metadata"]["labels"], "ray.io/node-type": "head"}  # KubeRay's
        if not sel <= set(head.items()):
            problems.append(f"the budget misses heads labelled {head}")
        for g in cluster["workerGroupSpecs"]:
            if sel <= set({**g["template"]["metadata"]["labels"], "ray.io/node-type": "worker"}.items()):
                problems.append(f"the budget holds the {g['groupName']} workers too (a drain would wait for them)")
    return problems


def test_a_disruption_budget_keeps_drains_off_the_heads():
    specs = [spec for _, spec in job_specs()]
    pdb = _one("PodDisruptionBudget")
    assert disruption_problems(pdb, specs) == []
    pdb["spec"]["selector"]["matchLabels"].pop("ray.io/node-type")
    assert any("workers too" in p for p in disruption_problems(pdb, specs))
    pdb = _one("PodDisruptionBudget")
    pdb["spec"]["selector"]["matchLabels"]["ray.io/node-type"] = "worker"
    assert any("misses heads" in p for p in disruption_problems(pdb, specs))
    pdb = _one("PodDisruptionBudget")
    pdb["spec"]["maxUnavailable"] = 1
    assert any("maxUnavailable" in p for p in disruption_problems(pdb, specs))
