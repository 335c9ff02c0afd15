"""Fixtures for the fault-injection suite (see ``faultlib``).

``world`` is parametrized over the offline backends: ``local`` and ``emulator`` (the modal
backend against one emulator shared by the session, so sandboxes outlive an inner run and only
the plugin's own layers end them).  After each test, no sandbox of any inner run is left
running — asked of the backend itself — and no inner pytest process is left.

Inner runs and CLI calls are forked from one warm interpreter per process (``zygote``), not
started afresh: each is still a process of its own, in a session of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import faultlib
from zygote import Zygote

BACKENDS = ["local", "emulator"]


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    """The warm interpreter this process forks its inner runs from (``tests/zygote.py``)."""
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """One emulator for the suite, and a ``modal`` client lister pointed at it."""
    from pytest_modal_sandbox.emulator import EmulatorProcess

    root = tmp_path_factory.mktemp("emulator")
    token = ("ak-faults", "as-faults")
    emu = EmulatorProcess(token_id=token[0], token_secret=token[1], state_dir=root).start()
    lister = None
    try:
        # polled every 50 ms while a test waits for sandboxes to end: each listing costs both
        # processes a few ms of CPU, and the tests ask whether they end, not to the millisecond
        # how soon (bench/bench_faults.py times that, with a lister of its own)
        lister = faultlib.ModalLister(emu.url, token, interval=0.05)
        yield emu, lister
        left = lister.running(tags={"pytest-modal-sandbox": "1"})
        assert not left, f"sandboxes left running in the emulator: {left}"
    finally:
        if lister is not None:
            lister.close()
        emu.stop()


@pytest.fixture(params=BACKENDS)
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    zygote: Zygote,
) -> Iterator[faultlib.World]:
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    if request.param == "local":
        w = faultlib.local_world(tmp_path, zygote)
    else:
        emu, lister = request.getfixturevalue("emulator")
        w = faultlib.World("emulator", tmp_path, lister, env=emu.client_env(), zygote=zygote)
    yield w
    leaked = faultlib.clean_up(w)
    assert not leaked, f"sandboxes left running after the test: {leaked}"


@pytest.fixture
def local_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zygote: Zygote
) -> Iterator[faultlib.World]:
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    w = faultlib.local_world(tmp_path, zygote)
    yield w
    leaked = faultlib.clean_up(w)
    assert not leaked, f"sandboxes left running after the test: {leaked}"
