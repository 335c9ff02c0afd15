"""The keeper server only starts keepers: killing it ends no sandbox, and it is replaced."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig


def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def test_killing_the_keeper_server_ends_no_sandbox(rt: LocalRuntime, state_dir: Path) -> None:
    sb = rt.create(SandboxConfig(block_network=True))
    server = _parent(sb._keeper.pid)
    assert server != os.getpid()
    title = Path(f"/proc/{sb._keeper.pid}/cmdline").read_bytes()
    assert title.startswith(f"pms-keeper {state_dir}/{sb.id}/".encode())  # ps shows whose
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _parent(sb._keeper.pid) == server and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sb.exec(["true"]).returncode == 0 and sb.poll() is None
    other = rt.create(SandboxConfig(block_network=True))  # a new server starts it
    assert _parent(other._keeper.pid) not in (server, os.getpid())
    sb.terminate(wait=True)
    assert sb.poll() is not None and sb.poll().kind == "terminated"  # type: ignore[union-attr]
