"""Ctrl-C must not be lost in a blocking ``modal`` client call that absorbs the cancellation
(synchronicity cancels the call's coroutine and returns its result if it completes anyway)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.faults

SCRIPT = r"""
import asyncio, os, signal, sys, threading, time

import synchronicity

from pytest_modal_sandbox.lifecycle.signals import install_sigint_handler

if sys.argv[1] == "ours":
    install_sigint_handler()
synchronizer = synchronicity.Synchronizer()


async def _poll():
    try:
        await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        return "absorbed"  # like a client retry loop that eats the cancellation
    return "ok"


poll = synchronizer.create_blocking(_poll)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
deadline = time.monotonic() + 5
try:
    while time.monotonic() < deadline:  # a readiness wait: poll, sleep, poll...
        poll()
        time.sleep(0.02)
except KeyboardInterrupt:
    print("interrupted")
else:
    print("lost")
"""


@pytest.mark.parametrize("handler", ["ours", "default"])
def test_ctrl_c_in_an_absorbing_client_call(handler):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, handler], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # with Python's default handler the interrupt can be lost; ours is never lost
    if handler == "ours":
        assert out.stdout.strip() == "interrupted"
    else:
        assert out.stdout.strip() in ("interrupted", "lost")
