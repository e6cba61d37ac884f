"""Which engine a model section builds, and what the vLLM engine is handed: jobs run vLLM;
the HF reference engine only for a section devtools marked; knobs that aren't fields reach
vLLM through engine_kwargs; the CPU build's KV cache size comes from the environment."""

from __future__ import annotations

import os
import pickle

from internvl_batch.config import SamplingConfig
from internvl_batch.devtools.hf_engine import on_hf_engine
from tests.support.engines import tiny_model_config


def test_a_marked_model_builds_the_hf_engine_and_keeps_the_mark_through_pickling(tiny_model_dir):
    from internvl_batch.engines import build_engine
    from internvl_batch.engines.hf import HFEngine

    model = tiny_model_config(tiny_model_dir)
    marked = pickle.loads(pickle.dumps(on_hf_engine(model)))  # as Ray ships it to the engine actor
    assert (model.engine, marked.engine) == ("vllm", "hf")
    engine = build_engine(marked, SamplingConfig(max_tokens=2))
    try:
        assert isinstance(engine, HFEngine)
    finally:
        engine.shutdown()


def test_engine_kwargs_reach_vllm_and_its_seed_is_fixed(tiny_model_dir):
    from internvl_batch.engines.vllm.engine import engine_args

    assert engine_args(tiny_model_config(tiny_model_dir))["enforce_eager"] is True  # from engine_kwargs
    args = engine_args(tiny_model_config(tiny_model_dir, engine_kwargs={}))
    assert "enforce_eager" not in args and args["seed"] == 0


def test_the_cpu_build_without_its_kv_cache_size_gets_a_default_and_keeps_a_given_one(monkeypatch):
    from internvl_batch.engines.vllm.engine import CPU_KVCACHE_DEFAULT_GIB, cpu_kvcache_default

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert cpu_kvcache_default() == str(CPU_KVCACHE_DEFAULT_GIB)  # this machine runs the CPU build
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(CPU_KVCACHE_DEFAULT_GIB)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert cpu_kvcache_default() is None and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
