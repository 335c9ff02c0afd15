"""Fixtures for the emulator's conformance tests: a real emulator process, the real client.

``MODAL_CONFIG_PATH`` points at an empty file *before* ``modal`` is imported (the config is
read at import), so a developer's ``~/.modal.toml`` cannot leak in.  Each test gets sandboxes
through ``make_sandbox``, which terminates them afterwards; the session's emulator is stopped
at the end and must leave no process behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulator_helpers import no_process_mentions, open_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # -> tests/, for registry.py
from registry import registry, registry_factory  # noqa: F401  (fixtures)

_CONFIG = Path(tempfile.mkdtemp(prefix="modal-config-")) / "modal.toml"
_CONFIG.touch()
os.environ.setdefault("MODAL_CONFIG_PATH", str(_CONFIG))
os.environ["MODAL_DISABLE_API_PROXY"] = "1"

NAMED_SECRET = {"NAMED": "from-cli", "SHARED": "named"}


@pytest.fixture(scope="session")
def emulator_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session emulator's ``--state-dir`` (its runtime sandboxes are in ``sandboxes/``)."""
    return tmp_path_factory.mktemp("emulator-state")


@pytest.fixture(scope="session")
def emulator(emulator_state: Path, runtime_available: None) -> Iterator[Any]:
    from pytest_modal_sandbox.emulator import EmulatorProcess

    state = emulator_state
    proc = EmulatorProcess(
        state_dir=state,
        secrets={"emu-named": NAMED_SECRET},
        extra_args=["--list-page-size", "2"],  # every listing of 2+ sandboxes paginates
        # The conformance tests run on the host root (its tools), also where Docker Hub is
        # reachable; real images are tested in test_images.py.
        images="host",
    ).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0
        assert no_process_mentions(str(state))


@pytest.fixture(scope="session")
def client(emulator: Any) -> Iterator[Any]:
    c = open_client(emulator.url)
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def app(client: Any) -> Any:
    import modal

    return modal.App.lookup("conformance", create_if_missing=True, client=client)


@pytest.fixture
def make_sandbox(app: Any, client: Any) -> Iterator[Callable[..., Any]]:
    """``make_sandbox(*cmd, **create_kwargs)``: a sandbox terminated after the test."""
    import modal

    made: list[Any] = []

    def make(*args: str, **kwargs: Any) -> Any:
        kwargs.setdefault("app", app)
        kwargs.setdefault("client", client)
        sb = modal.Sandbox.create(*args, **kwargs)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        try:
            sb.terminate()
        except modal.exception.ClientClosed:  # a detached handle: use a fresh one
            modal.Sandbox.from_id(sb.object_id, client=client).terminate()
