"""Crashes: an xdist worker SIGKILLed mid-test or while creating the run's shared sandbox, a
hook raising right after create, a readiness timeout, a daemon that dies on start.

After each: the sandboxes hit are gone (asked of the backend, while the run is still going
where that matters), nothing of the run is left, and the output says what happened.
"""

from __future__ import annotations

import pytest

import faultlib

pytestmark = pytest.mark.faults


def test_worker_sigkill_during_a_test(world):
    """The controller sees the worker go down and ends its sandbox while the run goes on
    (on local the keeper's tie to the worker is faster still)."""
    out = faultlib.worker_killed_in_test(world)
    assert out.returncode == 1, out.output
    assert "worker 'gw" in out.output and "crashed while running" in out.output
    assert "test_crash.py::test_victim" in out.output
    assert "modal-sandbox: worker gw" in out.output and "went down" in out.output
    assert "crashed: terminated" in out.output
    faultlib.none_running(world, out.run.run_id)


def test_worker_sigkill_while_creating_the_shared_sandbox(world):
    """The replacement (or the other worker) finds the half-made shared sandbox by its name,
    ends it and makes one; every test sees exactly one running shared sandbox."""
    out = faultlib.worker_killed_in_shared_setup(world)
    if "INTERNALERROR" in out.output and "BrokenPipeError" in out.output:
        # pytest-xdist#204: the controller's own send to the killed worker can fail, which
        # xdist reports as an internal error before the replacement runs; not ours to test
        out = faultlib.worker_killed_in_shared_setup(world)
    used = out.run.notes("used")
    victim = out.ids[0]
    assert len(used) >= 5, out.output  # the crashed worker's test is reported as crashed
    assert {u["id"] for u in used} != {victim}
    assert len({u["id"] for u in used}) == 1
    assert all(u["running"] == [u["id"]] for u in used), used
    assert "modal-sandbox: worker gw" in out.output and "went down" in out.output, out.output
    # the end-of-run sweep ends the one shared sandbox
    assert "(shared)" in out.output, (
        out.output + "\nledger notes: " + repr(out.run.notes("created"))
    )
    faultlib.none_running(world, out.run.run_id)


@pytest.mark.parametrize(
    ("test", "env", "says"),
    [
        (
            "test_plain",
            {"FAULT_ON_CREATED": "raise"},
            ["injected fault: the created hook raised", "1 error"],
        ),
        (
            "test_never_ready",
            {},
            ["daemon 'slow' was not ready after 1s (waiting for tcp port 8000)"],
        ),
        (
            "test_daemon_crashes",
            {},
            # and the last lines of its log
            ["daemon 'crasher' exited with code 3 before it was ready", "crashing"],
        ),
    ],
    ids=["created-hook-raises", "readiness-timeout", "daemon-crashes-on-start"],
)
def test_a_failed_start_ends_its_sandbox(world, test, env, says):
    out = faultlib.start_failure(world, test, env=env)
    assert out.returncode == 1
    for text in says:
        assert text in out.output, out.output
    assert "end of run" not in out.output  # the failed launch ended it, not the sweep
    faultlib.none_running(world, out.run.run_id)
