"""The stand-in engine stage of the observability tests (shipped to Ray's workers by value)."""

import os

from internvl_batch.job.monitor import MonitorClient
from internvl_batch.observe import metrics
from tests.support import stages as stand_in


class EngineStandIn(stand_in.EchoInference):
    """The stand-in engine, reporting what InferenceStage reports (replica gauges, request
    latencies) and one engine failure, through the same calls; test_engine_e2e checks the
    real stage's own calls."""

    def __init__(self, model, tasks, passthrough, run_id, monitor=None):
        super().__init__(model, tasks, passthrough, run_id, monitor)
        self.replica = str(os.getpid())
        MonitorClient(monitor).engine_failed(self.replica, "stand-in: one reported failure")

    async def process(self, batch):
        out = await super().process(batch)
        metrics.observe_ms("engine", [3.0] * out.num_rows)
        metrics.engine_state(self.replica, {"occupancy": 0.75, "in_flight": 2}, running=4, waiting=3)
        return out
