"""Termination on Modal: the dead-man switch ends the sandboxes of a run whose every pytest
process was SIGKILLed, and a sandbox ended from outside is a prompt, clear error."""

from __future__ import annotations

import signal

import pytest

import faultlib

pytestmark = pytest.mark.live


def test_dead_man_switch_after_sigkill_of_every_pytest_process(live, live_settings):
    """A test holds its own and the run's shared sandbox when the whole process group is
    SIGKILLed.  Nothing of pytest runs any more — no finalizer, no sweep, no next run — so
    only Modal's ``idle_timeout`` after the last heartbeat can end them: within lease + idle
    timeout (this run's ``--modal-sandbox-lease``/``--modal-sandbox-idle-timeout``)."""
    lease, idle = live_settings.lease, live_settings.idle_timeout
    out = faultlib.signal_fault(
        live,
        "call",
        signal.SIGKILL,
        test="test_shared_call",
        ini={"modal_sandbox_lease": str(lease), "modal_sandbox_idle_timeout": str(idle)},
        gone_timeout=lease + idle + live_settings.gone_slack,
    )
    assert out.returncode == -signal.SIGKILL
    assert len(out.ids) == 2, out.output  # the test's sandbox and the run's shared one
    print(f"gone {out.gone_after:.1f}s after SIGKILL (lease {lease}s + idle timeout {idle}s)")


EXTERNAL_TESTS = r"""
import subprocess
import sys
import threading
import time

import pytest

from pytest_modal_sandbox import SandboxGone

# another client, in another process: what `modal.Sandbox.from_id(id).terminate()` in a
# teammate's script, or a workspace's dashboard, does
TERMINATE = "import modal, sys; modal.Sandbox.from_id(sys.argv[1]).terminate(wait=True)"


def test_a_sandbox_ended_from_outside_is_a_prompt_clear_error(sandbox):
    ended = []

    def end_from_outside():
        time.sleep(2)  # the exec below is running by now
        subprocess.run([sys.executable, "-c", TERMINATE, sandbox.id], check=True, timeout=120)
        ended.append(time.monotonic())

    outside = threading.Thread(target=end_from_outside)
    outside.start()
    try:
        with pytest.raises(SandboxGone) as running:
            sandbox.exec("sleep", "300", timeout=120)
        raised = time.monotonic()
    finally:
        outside.join()
    # the contract is "within a second" of the end; 5 s leaves room for a loaded machine and
    # is far from the 120 s the exec would otherwise wait
    assert raised - ended[0] < 5
    for error in (running.value, pytest.raises(SandboxGone, sandbox.exec, "true").value):
        assert sandbox.id in str(error) and "terminated" in str(error).lower(), error
    assert sandbox.finished() is not None
"""


def test_a_sandbox_ended_from_outside_is_a_clear_error(live):
    faultlib.run_file(live, "external", EXTERNAL_TESTS)
