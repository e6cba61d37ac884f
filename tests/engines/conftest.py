import pytest

from tests.support.engines import GREEDY_16, tiny_model_config


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """One real vLLM replica (CPU build) shared by the engine tests: starting one costs ~1 min."""
    from internvl_batch.engines.vllm.engine import VLLMEngine

    engine = VLLMEngine(tiny_model_config(tiny_model_dir), GREEDY_16)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir):
    from internvl_batch.engines.hf import HFEngine

    engine = HFEngine(tiny_model_config(tiny_model_dir), GREEDY_16)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def twin_dirs(tmp_path_factory):
    from tests.support.families import twins

    return twins(tmp_path_factory)
