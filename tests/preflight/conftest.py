import pytest


@pytest.fixture(scope="session")
def twin_dirs(tmp_path_factory):
    """Every LLM family's tiny twin (tests/support/families.py), built once."""
    from tests.support.families import twins

    return twins(tmp_path_factory)
