import pytest

from tests.media.httpserver import MediaHTTPServer


@pytest.fixture(scope="module")
def http_server():
    """A real HTTP server on 127.0.0.1 (see httpserver.py), one per test module."""
    with MediaHTTPServer() as server:
        yield server
