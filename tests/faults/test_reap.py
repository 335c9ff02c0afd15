"""``python -m pytest_modal_sandbox list|reap`` and ``pytest --modal-sandbox-reap``, on each
backend: leftovers of dead runs are listed and reaped; a live run's only through ``all``, which
asks first on a terminal."""

from __future__ import annotations

import signal

import pytest

import faultlib

pytestmark = pytest.mark.faults


def _hanging_run(world, name):
    run = faultlib.hanging_run(world, name, test="test_shared_call")
    run.wait_note("reached", timeout=90)
    return run, sorted(n["id"] for n in run.notes("created"))


def _dead_runs(world, *names):
    """Runs that were all live at once (a run's start sweeps runs dead before it), then
    SIGKILLed: ``[(run_id, sandbox ids), ...]``."""
    started = [_hanging_run(world, name) for name in names]
    for run, _ in started:
        run.signal_group(signal.SIGKILL)
        run.wait(30)
    return [(run.run_id, ids) for run, ids in started]


def test_list_and_reap_all_of_a_live_run(world):
    be = faultlib.backend_args(world)
    rc, text = faultlib.cli(world, "list", *be)
    # the last line: modal may warn first (e.g. of an ageing Python) on the same terminal
    assert (rc, text.strip().splitlines()[-1]) == (
        0,
        f"no running sandboxes on {world.plugin_backend}",
    )

    live, ids = _hanging_run(world, "live")
    with live:
        rc, text = faultlib.cli(world, "list", *be)
        assert rc == 0
        rows = [line.split() for line in text.splitlines() if line.startswith("sb-")]
        assert sorted(r[0] for r in rows) == ids
        assert all(r[1] == live.run_id and r[2] == "alive" for r in rows), text

        rc, text = faultlib.cli(world, "reap", "--all", *be, answer="n")
        assert rc == 1 and "live runs included? [y/N]" in text and "nothing done" in text
        assert sorted(world.lister.running(live.run_id)) == ids

        rc, text = faultlib.cli(
            world,
            f"--modal-sandbox={world.plugin_backend}",
            "--modal-sandbox-reap=all",
            pytest_option=True,
            answer="y",
        )
        assert rc == 0, text
        assert "terminated 2 sandboxes (all runs)" in text
        assert "test session starts" not in text  # no run
        faultlib.none_running(world, live.run_id)

        live.signal_group(signal.SIGINT)
        assert live.wait(60) == 2  # the interrupted run's own sweep finds nothing left


def test_reap_the_leftovers_of_dead_runs(world):
    """Two runs SIGKILLed; on the Modal path (default lease) their sandboxes run on until the
    dead-man switch.  ``reap --run`` ends one's, ``pytest --modal-sandbox-reap`` (stale) the
    other's; both runs are forgotten."""
    be = faultlib.backend_args(world)
    (first, first_ids), (second, second_ids) = _dead_runs(world, "dead-1", "dead-2")
    modal_path = world.backend == "emulator"
    if modal_path:
        rc, text = faultlib.cli(world, "list", *be)
        rows = [line.split() for line in text.splitlines() if line.startswith("sb-")]
        assert sorted(r[0] for r in rows) == sorted(first_ids + second_ids), text
        assert all(r[2] == "dead" for r in rows), text
    else:  # local: they die with their owner (shared ones within the keeper's lock poll)
        faultlib.none_running(world, first)
        faultlib.none_running(world, second)

    rc, text = faultlib.cli(world, "reap", "--run", first, *be)
    assert rc == 0, text
    n = 2 if modal_path else 0  # local sandboxes already died with their owner
    assert f"terminated {n} sandbox{'es' if n != 1 else ''} of run {first}" in text
    faultlib.none_running(world, first, timeout=0.5 if modal_path else 15)
    if modal_path:
        assert sorted(world.lister.running(second)) == second_ids  # not that one

    rc, text = faultlib.cli(
        world, f"--modal-sandbox={world.plugin_backend}", "--modal-sandbox-reap", pytest_option=True
    )
    assert rc == 0, text
    assert f"terminated {n} sandbox{'es' if n != 1 else ''} of stale runs" in text
    faultlib.none_running(world, second, timeout=0.5 if modal_path else 15)
    assert not list((world.state_dir / "runs").glob("*.json"))


def test_reap_refuses_the_emulator_backend(local_world):
    rc, text = faultlib.cli(
        local_world, "--modal-sandbox=emulator", "--modal-sandbox-reap", pytest_option=True
    )
    assert rc == 4
    assert "the emulator backend starts a fresh emulator for each run" in text
