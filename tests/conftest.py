"""Shared by every test directory: ``tests/`` on ``sys.path`` for the helper modules that live
here (``proctable``, ``registry``), the real-registry fixtures, and ``runtime_available``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# An environment with PYTHONDONTWRITEBYTECODE=1 (this VM's) makes each of the few hundred
# Python processes the suite starts (xdist workers, inner runs, emulators, CLI calls) compile
# the package and redo pytest's assertion rewriting: about a sixth of the suite's CPU.  Its
# processes share a bytecode cache of their own instead, under .pytest_cache, never beside the
# sources.  (The keeper server runs with -I: it is not affected.)
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
    PYCACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "pycache"
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = False

from registry import registry, registry_factory  # noqa: F401  (fixtures for every directory)

# What an inner run in this process (``pytester.runpytest``) imports.  ``pytester`` puts
# ``sys.modules`` back as it found it after each test and each inner run, so anything first
# imported by an inner run is imported again by the next one: ``modal`` alone is about a second
# of CPU, and protobuf descriptors and process-wide helpers (the keeper server, the auth proxy)
# would be made again each time.  Imported before the test's ``pytester`` exists, they stay.
INLINE_RUN_IMPORTS = (
    "modal",
    "pytest_modal_sandbox.session",
    "pytest_modal_sandbox.backends.local",
    "pytest_modal_sandbox.backends.modal",
    "pytest_modal_sandbox.emulator.process",
    "pytest_modal_sandbox.lifecycle.watchdog",
    "xdist.dsession",
    "xdist.workermanage",
)


@pytest.fixture(scope="session")
def inline_runs() -> None:
    """Request it (with ``pytester``) for inner runs in this process: see ``INLINE_RUN_IMPORTS``.
    Session-scoped, so it is set up before any function-scoped ``pytester``."""
    import importlib

    for name in INLINE_RUN_IMPORTS:
        importlib.import_module(name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long tests first: those marked ``slow``, then the fault suite, each in the order they
    were collected.  A worker that draws a long test last keeps the run going alone; drawn
    first, the short ones fill in around it (``scripts/dev.sh test`` hands tests out two at a
    time: ``--maxschedchunk 2``)."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("faults") else 2

    items.sort(key=rank)  # stable: collection order within each rank


@pytest.fixture(scope="session")
def runtime_available() -> None:
    """Skip where the local runtime cannot run (no bubblewrap, no user namespaces)."""
    from pytest_modal_sandbox.runtime import LocalRuntime, RuntimeUnavailable

    try:
        LocalRuntime.check()
    except RuntimeUnavailable as exc:
        pytest.skip(f"local runtime unavailable: {exc}")
