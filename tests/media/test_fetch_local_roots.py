"""fetch.local_roots: local paths must resolve (symlinks, '..') into one of the roots."""

import pytest
from pydantic import ValidationError

from internvl_batch.media.errors import URLNotAllowed
from internvl_batch.media.fetch import FetchConfig, Fetcher


@pytest.fixture
def rooted(tmp_path):
    """A media root with a file, a symlink out of it, and a secret next to it."""
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"inside")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    (root / "link.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "sub").mkdir()
    return tmp_path, Fetcher(FetchConfig(local_roots=[str(root)]))


def test_local_roots_admit_paths_inside(rooted):
    tmp_path, fetcher = rooted
    assert fetcher.fetch(str(tmp_path / "media" / "a.jpg")) == b"inside"
    assert fetcher.fetch(f"file://{tmp_path}/media/sub/../a.jpg") == b"inside"


@pytest.mark.parametrize("name", ["secret.txt", "media/../secret.txt", "media/link.jpg", "media/sub/../../secret.txt"])
def test_local_roots_refuse_paths_that_leave_them(rooted, name):
    tmp_path, fetcher = rooted
    for url in (str(tmp_path / name), f"file://{tmp_path}/{name}"):
        with pytest.raises(URLNotAllowed, match="outside fetch.local_roots") as info:
            fetcher.fetch(url)
        assert info.value.status == "fetch_error"
    assert fetcher.stats.failures == 2


def test_local_roots_that_are_symlinks_work(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"via link")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    fetcher = Fetcher(FetchConfig(local_roots=[str(tmp_path / "alias")]))
    assert fetcher.fetch(str(tmp_path / "alias" / "a.jpg")) == b"via link"
    assert fetcher.fetch(str(tmp_path / "real" / "a.jpg")) == b"via link"


def test_local_roots_must_be_absolute():
    with pytest.raises(ValidationError, match="local roots must be absolute"):
        FetchConfig(local_roots=["media"])
