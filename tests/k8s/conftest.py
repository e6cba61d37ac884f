"""Fixtures shared by the tests/k8s tests: the KubeRay CRDs, the parsed Dockerfile and ConfigMaps,
and `internvl-batch validate` on a job config's text."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from internvl_batch.cli import main as cli_main
from internvl_batch.config import JobConfig
from tests.k8s.crd import CRDs, crds_from_env
from tests.k8s.dockerfile import DOCKERFILE, dockerfile_instructions, image_file_map
from tests.k8s.manifests import docs_of


@pytest.fixture(scope="session")
def crds() -> CRDs:
    """Skips the test locally, fails it in CI, when $KUBERAY_CRD_DIR lacks the CRDs."""
    return crds_from_env()


@pytest.fixture(scope="session")
def configmaps() -> dict[str, dict]:
    """The k8s/ ConfigMaps by name."""
    return {d.name: d.body for d in docs_of("ConfigMap")}


@pytest.fixture(scope="session")
def dockerfile() -> list[tuple[str, str]]:
    """docker/Dockerfile as (INSTRUCTION, arguments)."""
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="session")
def image_files(dockerfile) -> dict[str, str]:
    """Path in the image -> path in the repo."""
    return image_file_map(dockerfile)


@pytest.fixture
def validate_config(tmp_path) -> Callable[..., tuple[int, JobConfig]]:
    """validate(text, overrides=()) -> (exit code of `internvl-batch validate --config-only`,
    the loaded JobConfig), for a job config given as text, with `--set` overrides."""
    from internvl_batch.config.loader import load_config

    def validate(text: str, overrides: list[str] = ()) -> tuple[int, JobConfig]:
        path = tmp_path / "job.yaml"
        path.write_text(text)
        argv = ["validate", str(path), "--config-only"]
        for o in overrides:
            argv += ["--set", o]
        return cli_main(argv), load_config(path, list(overrides))

    return validate
