"""Fixtures for end-to-end plugin tests.

Each pytester run gets its own state directory (``PYTEST_MODAL_SANDBOX_STATE_DIR``), so "no
sandbox left" is asked of exactly that run: of the backend's own records, and of the process
table (no keeper, bwrap or emulator process mentioning the directory).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inner_runs import ADDOPTS
from proctable import processes_mentioning

BACKENDS = ["local", "emulator"]


def running_sandboxes(state_dir: Path) -> list[str]:
    """Sandboxes the local runtime (used directly, or by the emulator) still reports running."""
    from pytest_modal_sandbox.runtime import LocalRuntime

    ids = []
    for sub in ("local", "emulator"):
        if (state_dir / sub).exists():
            ids += [sb.id for sb in LocalRuntime(state_dir / sub).list()]
    return ids


def leftovers(state_dir: Path, timeout: float = 15.0) -> tuple[list[str], list[tuple[int, str]]]:
    """What is still running for ``state_dir`` once things had ``timeout`` seconds to end."""
    deadline = time.monotonic() + timeout
    while True:
        sandboxes = running_sandboxes(state_dir)
        procs = processes_mentioning(str(state_dir))
        if (not sandboxes and not procs) or time.monotonic() > deadline:
            return sandboxes, procs
        time.sleep(0.1)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "pms-state"
    path.mkdir()
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(path))
    yield path
    sandboxes, procs = leftovers(path)
    assert not sandboxes, f"sandboxes left running: {sandboxes}"
    assert not procs, f"processes left running: {procs}"


@pytest.fixture
def sbtester(pytester: pytest.Pytester, state_dir: Path, inline_runs: None) -> pytest.Pytester:
    """A pytester whose runs use an isolated state dir, checked for leftovers afterwards.

    Its runs are in this process (``sbtester.runpytest``): about a second of CPU less each
    than a fresh interpreter importing pytest, the plugin and ``modal``.  A run that must be a
    process of its own (a signal, a crash, a terminal) says so with ``runpytest_subprocess``;
    output written straight to file descriptors by the run's child processes (emulator,
    xdist workers) is not in an in-process run's result: ask ``capfd`` for it."""
    pytester.makeini(f"[pytest]\naddopts = {ADDOPTS}\nmodal_sandbox_local_images = host\n")
    return pytester


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend that runs offline: the behaviour suite is the same assertion on each."""
    return str(request.param)
