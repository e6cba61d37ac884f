import os

import pytest

from internvl_batch.devtools.tiny_model import make_tiny_model

# The CPU build of vLLM starts its model worker in a process of its own (the MP executor,
# for OpenMP thread binding); with multiprocessing off it runs in the engine core process,
# which starts each engine ~17 s sooner on 2 cores. The engine core stays a process of its
# own (AsyncLLM), so the engine-death tests kill what production runs. Speed only: every
# engine the suite starts is the same vLLM engine and answers the same tokens; the README
# test runs its commands without this (tests/test_readme.py).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The project's tiny InternVL2.5 checkpoint (original layout), built once per session."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-internvl") / "model", seed=0)


@pytest.fixture(scope="session")
def s3():
    """A real S3 API server (SeaweedFS) on 127.0.0.1, shared by the session."""
    from tests.support.s3server import S3Server

    with S3Server() as server:
        yield server
