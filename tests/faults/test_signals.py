"""Ctrl-C, SIGTERM and SIGKILL sent to an inner run's whole process group, in each phase.

After each: the sandboxes the run had are no longer listed by the backend, and the run's output
says what happened.  (How fast: ``bench/bench_faults.py``; tests assert no durations.)
"""

from __future__ import annotations

import signal

import pytest

import faultlib

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("where", ["setup", "call", "teardown"])
def test_ctrl_c_in_each_phase(world, where):
    out = faultlib.signal_fault(world, where, signal.SIGINT)
    assert out.returncode == 2, out.output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out.output
    assert len(out.ids) == 1
    swept = f"modal-sandbox: end of run: terminated 1 sandbox still running: {out.ids[0]}"
    if where == "teardown":
        # the interrupt in a user finalizer skips the sandbox's own: the sweep ends it
        assert f"{swept} (test_faults.py::test_teardown)" in out.output
    else:
        # setup: the failed launch ends it; call: pytest still tears fixtures down
        assert "end of run" not in out.output
    faultlib.none_running(world, out.run.run_id)


def test_ctrl_c_under_xdist(world):
    out = faultlib.signal_fault(world, "call", signal.SIGINT, workers=2, test="test_shared_call")
    assert out.returncode == 2, out.output
    assert "KeyboardInterrupt" in out.output
    assert len(out.ids) == 2  # the shared sandbox and the test's own
    # workers never end the shared one: the controller's sweep does, and says so
    assert "modal-sandbox: end of run: terminated 1 sandbox still running: " in out.output
    assert "(shared)" in out.output
    faultlib.none_running(world, out.run.run_id)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_is_handled_like_ctrl_c(world, workers):
    out = faultlib.signal_fault(world, "call", signal.SIGTERM, workers=workers)
    assert out.returncode == 2, out.output
    assert "received signal 15 (SIGTERM)" in out.output or "KeyboardInterrupt" in out.output
    faultlib.none_running(world, out.run.run_id)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_of_every_pytest_process(world, workers):
    """Nothing in pytest runs: the dead-man switch ends the sandboxes (local: the keeper's tie
    to its owner; Modal path: the heartbeat lease and idle_timeout, short here)."""
    out = faultlib.signal_fault(
        world,
        "call",
        signal.SIGKILL,
        workers=workers,
        test="test_shared_call",
        ini=faultlib.DEADMAN_INI,
        gone_timeout=30,
    )
    assert out.returncode == -signal.SIGKILL
    assert len(out.ids) == 2
    faultlib.none_running(world, out.run.run_id)
