"""Our `ray_internvl_*` samples read from a Ray cluster's metrics endpoint, as Prometheus reads them."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]


def scrape(port: int) -> dict[str, dict[Labels, float]]:
    """{sample name: {our labels (sorted items): value summed over Ray's processes}}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_internvl_"):
                # Ray adds its own labels (Component, WorkerId, ..., otel_*); ours are lower case.
                ours = tuple(
                    sorted((k, v) for k, v in s.labels.items() if k[0].islower() and not k.startswith("otel_"))
                )
                found[s.name][ours] += s.value
    return found
