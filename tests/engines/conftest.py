import uuid

import fsspec
import pytest

from tests.engines.checkpoints import write_checkpoint
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


@pytest.fixture
def checkpoint(tmp_path):
    """A small checkpoint directory on disk: (its path, {file name: bytes})."""
    root = tmp_path / "checkpoint"
    root.mkdir()
    return root, write_checkpoint(root)


@pytest.fixture
def memory_prefix():
    """A model prefix in fsspec's in-memory object store (a real fsspec filesystem, shared by this process)."""
    url = f"memory://models-{uuid.uuid4().hex[:8]}/InternVL2_5-8B"
    yield url
    fs, bucket = fsspec.filesystem("memory"), url.removeprefix("memory://").split("/")[0]
    if fs.exists(bucket):
        fs.rm(bucket, recursive=True)
