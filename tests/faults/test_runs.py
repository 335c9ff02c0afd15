"""Runs and each other: a dead run is swept by the next one; a live run is never touched by
another run's sweeps; the run's own emulator dies with its controller."""

from __future__ import annotations

import signal

import pytest

import faultlib

pytestmark = pytest.mark.faults


def test_stale_run_is_swept_at_the_start_of_the_next(world):
    out = faultlib.stale_run_swept_by_next(world)
    dead = out.extra["dead"]
    assert out.returncode == 0, out.output
    if world.backend == "emulator":
        # nothing of pytest is left, yet the sandboxes run on (the dead-man switch is 2 min
        # away): only the next run's start-of-run sweep can end them this soon
        assert sorted(out.extra["still"]) == sorted(out.ids)
        assert f"modal-sandbox: stale run {dead} (its pytest died): terminated 2 sandboxes" in (
            out.output
        )
    else:
        # local sandboxes die with their owner (within the keeper's lock poll); the sweep
        # forgets the dead run
        assert f"modal-sandbox: stale run {dead} (its pytest died)" in out.output
    assert not list((world.state_dir / "runs").glob(f"{dead}.*"))
    faultlib.none_running(world, dead)


def test_a_live_run_is_never_touched_by_another_runs_sweeps(world):
    live = faultlib.InnerRun(
        world,
        "live",
        {"test_faults.py": faultlib.SIGNAL_TESTS},
        args=["test_faults.py::test_shared_call", "-p", "no:xdist"],
    )
    with live:
        live.wait_note("reached", timeout=90)
        live_id = live.run_id
        ids = sorted(n["id"] for n in live.notes("created"))
        assert len(ids) == 2
        # another run, with sandboxes of its own, its start and end sweeps
        other = faultlib.InnerRun(
            world,
            "other",
            {"test_crash.py": faultlib.CRASH_TESTS},
            args=["test_crash.py::test_plain", "test_crash.py::test_uses_shared", "-n", "2"],
        )
        with other:
            assert other.wait(90) == 0, other.output()
        assert "stale run" not in other.output()
        # the reapers that stay away from live runs
        rc, text = faultlib.cli(world, "reap", "--stale", *faultlib.backend_args(world))
        assert rc == 0, text
        rc, text = faultlib.cli(
            world,
            f"--modal-sandbox={world.plugin_backend}",
            "--modal-sandbox-reap",
            pytest_option=True,
        )
        assert rc == 0, text
        assert "terminated 0 sandboxes of stale runs" in text
        rc, text = faultlib.cli(world, "reap", "--run", live_id, *faultlib.backend_args(world))
        assert rc == 2
        assert f"run {live_id} is still running" in text and "reap --all" in text
        assert sorted(world.lister.running(live_id)) == ids
        live.signal_group(signal.SIGINT)
        assert live.wait(60) == 2
    faultlib.none_running(world, live_id)
    faultlib.none_running(world, other.run_id)


def test_the_runs_own_emulator_dies_with_its_controller(local_world):
    """``--modal-sandbox=emulator`` starts an emulator in a session of its own; when every
    pytest process is SIGKILLed, it (and so every sandbox in it) must end too."""
    out = faultlib.own_emulator_killed(local_world)
    assert out.returncode == -9
    assert not faultlib.processes_mentioning(str(local_world.state_dir))
