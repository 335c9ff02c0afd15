"""Tying a helper process (the run's own emulator) to this one, SIGKILL included."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable

__all__ = ["kill_with_this_process"]

_WATCHDOG = r"""
import os, select, signal, sys
pidfd = os.pidfd_open(int(sys.argv[1]))
grace = float(sys.argv[2])
while True:
    try:
        if not os.read(0, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
try:
    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
except OSError:
    sys.exit(0)
if not select.select([pidfd], [], [], grace)[0]:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
"""


def kill_with_this_process(pid: int, *, grace: float = 10.0) -> Callable[[], None]:
    """Make sure process ``pid`` (our child, in its own session) ends when this process does,
    however it ends — SIGKILL included.

    A tiny watchdog in a session of its own (a signal to our process group does not reach it)
    waits for EOF on a pipe only this process holds; then it sends ``pid`` SIGTERM and, after
    ``grace`` seconds, SIGKILL.  It holds a pidfd, so a reused pid is never hit.  Returns a
    function that ends the watchdog the same way (call it after stopping ``pid`` yourself).
    """
    read_end, write_end = os.pipe()  # not inheritable: workers we spawn do not keep it open
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pid), str(grace)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)

    held = [write_end]

    def release() -> None:
        while held:
            os.close(held.pop())
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace + 5)

    return release
