"""Fixtures for the local runtime's tests: a private state dir, and a leak check after each test.

Every test gets its own state dir; at teardown every sandbox recorded there is terminated and
the test fails if any process still mentions that dir in its command line (keepers, bwrap,
relay helpers) or if any sandbox's PID 1 is still alive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import processes_mentioning

from pytest_modal_sandbox.runtime import LocalRuntime, procs


@pytest.fixture
def state_dir(tmp_path: Path, runtime_available: None) -> Iterator[Path]:
    path = tmp_path / "state"
    path.mkdir()
    yield path
    rt = LocalRuntime(path)
    inits = []
    for sb in rt.list(include_finished=True):
        if sb._init is not None:
            inits.append(sb._init)
        sb.terminate(wait=True)
    rt.close()
    leftovers = processes_mentioning(str(path))
    deadline = time.monotonic() + 5
    while leftovers and time.monotonic() < deadline:  # a child process we are reaping now
        time.sleep(0.05)
        leftovers = processes_mentioning(str(path))
    assert not leftovers, f"processes left behind: {leftovers}"
    alive = [ref for ref in inits if procs.is_alive(ref)]
    assert not alive, f"sandbox PID 1 still alive: {alive}"


@pytest.fixture
def rt(state_dir: Path) -> Iterator[LocalRuntime]:
    runtime = LocalRuntime(state_dir)
    yield runtime
    runtime.close()
