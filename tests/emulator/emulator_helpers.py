"""Helpers shared by the emulator's tests (a uniquely named module: tests are not packages)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from proctable import processes_mentioning

T = TypeVar("T")


def eventually(check: Callable[[], object], limit: float = 30.0) -> bool:
    """Whether ``check()`` becomes true within ``limit`` seconds (a liveness bound, no timing)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def reset_modal_globals() -> None:
    """Process-wide caches that must not outlive one emulator (wire spec §1.5)."""
    import modal
    import modal._environments

    # 1.6.4 calls it _set_env_client; 1.6.0 (the lowest supported) set_env_client
    reset = getattr(modal.Client, "_set_env_client", None) or modal.Client.set_env_client
    reset(None)
    modal._environments.ENVIRONMENT_CACHE.clear()


def open_client(url: str, token_id: str = "ak-test", token_secret: str = "as-test") -> Any:
    import modal
    from modal_proto import api_pb2

    reset_modal_globals()
    client = modal.Client(url, api_pb2.CLIENT_TYPE_CLIENT, (token_id, token_secret))
    client.__enter__()
    return client


def no_process_mentions(text: str) -> bool:
    """Whether no live process mentions ``text`` (checked once: the emulator waits for every
    keeper to finish cleaning up before it exits)."""
    return not processes_mentioning(text)


class Emu:
    """An emulator of a test module's own (other options than the session's), the real client
    and an app on it; sandboxes made with :meth:`create` are terminated at the end."""

    def __init__(self, proc: Any, state: Path) -> None:
        import modal

        self.proc = proc
        self.state = state
        self.client = open_client(proc.url)
        self.app = modal.App.lookup("own", create_if_missing=True, client=self.client)
        self.made: list[Any] = []

    def create(self, *args: str, **kwargs: Any) -> Any:
        import modal

        sb = modal.Sandbox.create(*args, app=self.app, client=self.client, **kwargs)
        self.made.append(sb)
        return sb

    def runtime_sandboxes(self) -> int:
        """Sandboxes the emulator's runtime has (running or not yet cleaned up)."""
        from pytest_modal_sandbox.runtime import LocalRuntime

        return len(LocalRuntime(self.state / "sandboxes").list())

    def rpcs(self) -> dict[str, dict[str, int]]:
        return dict(self.proc.stats()["rpcs"])

    def close(self) -> None:
        for sb in self.made:
            persist(sb.terminate)
        self.client.__exit__(None, None, None)


def own_emulator(tmp_path_factory: pytest.TempPathFactory, **options: Any) -> Iterator[Emu]:
    """For a module-scoped fixture: ``yield from own_emulator(tmp_path_factory, **options)``
    (``EmulatorProcess`` options; images run on the host root; ``state_dir`` defaults to a
    new directory).  It must stop cleanly."""
    from pytest_modal_sandbox.emulator import EmulatorProcess

    state = Path(options.pop("state_dir", None) or tmp_path_factory.mktemp("own-emulator"))
    proc = EmulatorProcess(state_dir=state, images="host", **options).start()
    try:
        emu = Emu(proc, state)
        try:
            yield emu
        finally:
            emu.close()
    finally:
        assert proc.stop() == 0
        assert no_process_mentions(str(state))


def persist(call: Callable[[], T], attempts: int = 8) -> T:
    """``call()`` again when a transient error outlived the client's own retries: under
    ``--fault-rate`` a call whose every retry meets a fault surfaces (``ServiceError``,
    ``InternalError``, or grpclib's raw ``StreamTerminatedError`` after reset streams)."""
    from grpclib.exceptions import StreamTerminatedError
    from modal.exception import InternalError, ServiceError

    for _ in range(attempts - 1):
        try:
            return call()
        except (ServiceError, InternalError, StreamTerminatedError, ConnectionError):
            continue
    return call()
