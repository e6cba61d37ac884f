"""The job with the stand-in stages (tests/support/stages.py), its engine replicas telling which
Ray node they run on: `python -m tests.support.preemption CONFIG`.

Each engine actor writes `<$INTERNVL_TEST_NODE_DIR>/<pid>.node` (its node id) when it starts
and touches it after every batch, so a test can find the node to preempt without asking Ray's
state API (which lags behind a fast-moving job) and see the replacement at work.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support import stages as stand_in


class NodeReportingEngine(stand_in.EchoInference):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import ray

        self.report = Path(os.environ["INTERNVL_TEST_NODE_DIR"], f"{os.getpid()}.node")
        self.report.write_text(ray.get_runtime_context().get_node_id())

    async def process(self, batch):
        out = await super().process(batch)
        os.utime(self.report)
        return out


def engine_nodes(report_dir: Path) -> dict[str, float]:
    """{node id: when an engine there last finished a batch (or started)}."""
    found: dict[str, float] = {}
    for p in report_dir.glob("*.node"):
        node, mtime = p.read_text(), p.stat().st_mtime
        found[node] = max(found.get(node, 0.0), mtime)
    return found


def main() -> int:
    import sys

    import cloudpickle

    import tests.support.preemption as me
    from internvl_batch.config import load_config
    from internvl_batch.job.runner import run_job

    cloudpickle.register_pickle_by_value(me)
    cloudpickle.register_pickle_by_value(stand_in)
    stages = {**stand_in.STAGES, "inference": NodeReportingEngine}
    summary = run_job(load_config(sys.argv[1]), stages=stages)
    return 0 if summary.finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
