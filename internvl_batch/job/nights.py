"""Which nights a scheduled run processes: its date from the schedule, catch-up after an outage.

KubeRay's RayCronJob controller annotates every RayJob it creates with the tick it was
created for, `ray.io/cronjob-scheduled-timestamp: <RFC 3339, UTC>` (controllers/ray/
raycronjob_controller.go, `constructRayJob`, in the v1.6.2 and v1.7.0 tags; the key is
`utils.RayCronJobTimestampAnnotationKey`), and copies the RayJob's annotations onto the
RayCluster it makes (`constructRayClusterForRayJob`). The Ray head reads its RayCluster
through the Kubernetes API with its service account, which KubeRay's autoscaler Role
already lets `get` RayClusters (common/rbac.go), named by the RAY_CLUSTER_NAME and
RAY_CLUSTER_NAMESPACE variables KubeRay sets in every Ray container. INTERNVL_SCHEDULED_TIME
overrides it (other schedulers, tests).

After an operator outage or a `suspend`, the controllers differ (same files): v1.6.2
creates one RayJob, for the first missed tick, and skips the others; v1.7.0 creates one
per missed tick, at once. Either way a run scheduled for night N processes every night
from `latest - catch_up` to `latest` (latest: the newest night that is over now, at least
N) that is not done yet, oldest first; runs scheduled for those nights find them done or
leased by that run (job/lease.py) and end. A run whose own night is older than that
window is refused, naming the nights to rerun by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

SCHEDULE_ANNOTATION = "ray.io/cronjob-scheduled-timestamp"
SCHEDULED_ENV = "INTERNVL_SCHEDULED_TIME"
KUBE_API_ENV = "INTERNVL_KUBE_API"  # default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class NightError(Exception):
    """The nights can't be determined or are refused; the message says what to do."""


def parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise NightError(f"not an RFC 3339 time: {text!r}") from None
    if t.tzinfo is None:
        raise NightError(f"{text!r} has no time zone (KubeRay writes UTC, e.g. 2026-05-02T00:15:00Z)")
    return t.astimezone(dt.UTC)


def scheduled_time(env: dict[str, str] | None = None, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> dt.datetime:
    """When this run was scheduled: $INTERNVL_SCHEDULED_TIME, else the RayCluster's annotation."""
    env = os.environ if env is None else env
    if env.get(SCHEDULED_ENV):
        return parse_time(env[SCHEDULED_ENV])
    name, ns = env.get("RAY_CLUSTER_NAME"), env.get("RAY_CLUSTER_NAMESPACE")
    if not name or not ns:
        raise NightError(
            f"no scheduled time: ${SCHEDULED_ENV} is not set and this is not a KubeRay Ray container "
            f"(no RAY_CLUSTER_NAME / RAY_CLUSTER_NAMESPACE); give --night YYYY-MM-DD or --days-ago N instead"
        )
    api = (
        env.get(KUBE_API_ENV)
        or f"https://{env.get('KUBERNETES_SERVICE_HOST')}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
    )
    url = f"{api}/apis/ray.io/v1/namespaces/{ns}/rayclusters/{name}"
    headers = {"Accept": "application/json"}
    token = sa_dir / "token"
    if token.is_file():
        headers["Authorization"] = f"Bearer {token.read_text().strip()}"
    context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt")) if (sa_dir / "ca.crt").is_file() else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30, context=context) as r:
            cluster = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise NightError(
            f"could not read RayCluster {ns}/{name} from {api} ({e}): the head's service account needs `get` on "
            f"rayclusters (KubeRay grants it with enableInTreeAutoscaling) and egress to the API server"
        ) from e
    stamp = ((cluster.get("metadata") or {}).get("annotations") or {}).get(SCHEDULE_ANNOTATION)
    if not stamp:
        raise NightError(
            f"RayCluster {ns}/{name} has no {SCHEDULE_ANNOTATION} annotation: this RayJob was not created by a "
            f"RayCronJob; give --night YYYY-MM-DD or --days-ago N for a rerun"
        )
    return parse_time(stamp)


def nights_to_consider(own: dt.date, today: dt.date, days: int, catch_up: int) -> list[dt.date]:
    """The window a scheduled run looks at, oldest first: `latest - catch_up` .. `latest`."""
    latest = max(own, today - dt.timedelta(days=days))
    first = latest - dt.timedelta(days=catch_up)
    if own < first:
        missed = (first - own).days
        raise NightError(
            f"this run was scheduled for night {own}, {(latest - own).days} nights before the latest night that is "
            f"over ({latest}); catching up more than --catch-up {catch_up} nights is refused: rerun the nights "
            f"{own} .. {first - dt.timedelta(days=1)} ({missed}) oldest first with --night YYYY-MM-DD "
            f"(k8s/README.md, 'Catch-up after an outage'), then the next scheduled run does the rest"
        )
    return [first + dt.timedelta(days=i) for i in range((latest - first).days + 1)]
