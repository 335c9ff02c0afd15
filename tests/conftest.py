"""Shared by every test directory: ``tests/`` on ``sys.path`` for the helper modules that live
here (``proctable``, ``registry``), the real-registry fixtures, and ``runtime_available``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry import registry, registry_factory  # noqa: F401  (fixtures for every directory)


@pytest.fixture(scope="session")
def runtime_available() -> None:
    """Skip where the local runtime cannot run (no bubblewrap, no user namespaces)."""
    from pytest_modal_sandbox.runtime import LocalRuntime, RuntimeUnavailable

    try:
        LocalRuntime.check()
    except RuntimeUnavailable as exc:
        pytest.skip(f"local runtime unavailable: {exc}")
