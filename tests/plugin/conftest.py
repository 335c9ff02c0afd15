"""Fixtures for end-to-end plugin tests: each pytester run gets its own state directory, so
"no sandbox left" can be asked of exactly that run's sandboxes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pms-state"
    path.mkdir()
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(path))
    return path


@pytest.fixture
def sbtester(pytester: pytest.Pytester, state_dir: Path) -> pytest.Pytester:
    """A pytester whose runs use an isolated state dir and load only what they need."""
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester


def running_sandboxes(state_dir: Path) -> list[str]:
    """Ids of sandboxes the local runtime in ``state_dir`` still reports as running."""
    from pytest_modal_sandbox.runtime import LocalRuntime

    return [sb.id for sb in LocalRuntime(state_dir / "local").list()]


def wait_until_no_sandbox(state_dir: Path, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = running_sandboxes(state_dir)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
