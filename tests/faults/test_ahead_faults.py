"""Sandboxes started ahead of their tests are covered by every termination layer: after a
Ctrl-C and after a worker is SIGKILLed, none of them is left (asked of the backend)."""

from __future__ import annotations

import pytest

import faultlib

pytestmark = pytest.mark.faults


def test_ctrl_c_with_sandboxes_started_ahead(world):
    out = faultlib.ctrl_c_with_sandboxes_ahead(world)
    assert out.returncode == 2, out.output  # pytest's "interrupted"
    assert len(out.ids) == 1 + faultlib.AHEAD, out.ids  # its own, and the next tests'
    assert "KeyboardInterrupt" in out.output
    assert "started ahead: 4, used 1, wasted 3" in out.output
    faultlib.none_running(world, out.run.run_id)


def test_worker_sigkill_with_sandboxes_started_ahead(world):
    """The controller ends every sandbox the dead worker had, those started ahead included,
    while the run goes on."""
    out = faultlib.worker_killed_with_sandboxes_ahead(world)
    assert len(out.ids) == 1 + faultlib.AHEAD, out.ids
    assert out.returncode == 1, out.output  # the crashed test fails the run
    assert "modal-sandbox: worker gw" in out.output and "went down" in out.output
    faultlib.none_running(world, out.run.run_id)
