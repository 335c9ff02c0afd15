"""Fixtures for the image tests: the real registry (tests/registry.py), a private cache and
the local runtime (overlay and copied roots)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proctable import processes_mentioning
from pytest_modal_sandbox.images import ImageStore
from pytest_modal_sandbox.runtime import LocalRuntime, RuntimeUnavailable
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


@pytest.fixture(params=["overlay", "copy"])
def runtime(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalRuntime]:
    """The local runtime, once with an overlayfs root and once with a copied root."""
    try:
        LocalRuntime.check()
    except RuntimeUnavailable as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_ROOTFS", request.param)
    state = tmp_path / "state"
    rt = LocalRuntime(state)
    try:
        yield rt
    finally:
        for sb in rt.list(include_finished=False):
            sb.terminate(wait=True)
        rt.close()
    assert processes_mentioning(str(state)) == []
