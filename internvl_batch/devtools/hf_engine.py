"""The HF reference engine (engines/hf.py) in place of vLLM, for tests and devtools only.

No config file can ask for it: it is the fidelity oracle, one request at a time, and a job
that ran on it by a typo would run for days. A test that wants the job's whole path on it
(fast, no vLLM start) builds its config, then passes it through `on_hf_engine`.
"""

from __future__ import annotations

from typing import TypeVar

from internvl_batch.config import JobConfig, ModelConfig

C = TypeVar("C", JobConfig, ModelConfig)


def on_hf_engine(cfg: C) -> C:
    """A copy of a job's config (or of its model section) whose replicas run the HF engine."""
    if isinstance(cfg, JobConfig):
        return cfg.model_copy(update={"model": on_hf_engine(cfg.model)})
    model = cfg.model_copy()
    model._engine = "hf"
    return model
