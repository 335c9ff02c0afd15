"""Fixtures for the image tests: the real registry (tests/registry.py) and a private cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_modal_sandbox.images import ImageStore
from registry import registry, registry_factory  # noqa: F401  (fixtures)

_ENV = (
    "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH",
    "PYTEST_MODAL_SANDBOX_REGISTRY_MIRROR",
    "PYTEST_MODAL_SANDBOX_INSECURE_REGISTRIES",
    "PYTEST_MODAL_SANDBOX_PLATFORM",
)


@pytest.fixture(autouse=True)
def _isolated_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the developer's own Docker credentials or image settings."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    docker = tmp_path / "docker-config"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "cache")
