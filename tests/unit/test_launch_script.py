"""The daemons' launch script, as text."""

from __future__ import annotations

from pytest_modal_sandbox import Daemon
from pytest_modal_sandbox.daemons import READY_MARK, launch_script


def test_the_launch_script_leaves_the_ready_mark_alone() -> None:
    """With Modal's own readiness probe the launch is fire-and-forget: it may run after the
    probe passed and a shared sandbox's ready mark was written; removing the mark then made the
    next worker take a ready shared sandbox for a half-made one and replace it."""
    assert READY_MARK not in launch_script([Daemon("d", "sleep 600")])
