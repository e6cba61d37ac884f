import pytest

from internvl_batch.devtools.tiny_model import make_tiny_model


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
