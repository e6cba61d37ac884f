import pytest

from tests.support.s3server import S3Server


@pytest.fixture(scope="session")
def s3():
    """A real S3 API server (SeaweedFS) on 127.0.0.1, shared by the session."""
    with S3Server() as server:
        yield server
