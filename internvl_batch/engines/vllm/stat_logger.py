"""vLLM's side of occupancy (engines/occupancy.py): a stat logger fed every engine step."""

from __future__ import annotations

from internvl_batch.engines.occupancy import Occupancy


def logger_class(occupancy: Occupancy) -> type:
    """A vLLM stat logger class (vLLM instantiates it) that feeds `occupancy`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class OccupancyLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                occupancy.record(scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs)

        def log_engine_initialized(self):
            pass

    return OccupancyLogger
