"""Reaping on Modal: ``python -m pytest_modal_sandbox reap --stale`` and
``pytest --modal-sandbox-reap`` end the sandboxes of a run whose pytest was SIGKILLed (the
plugin's default lease keeps them alive until then), and never a live run's — which Ctrl-C
then ends itself."""

from __future__ import annotations

import signal

import pytest

import faultlib

pytestmark = pytest.mark.live


def _holding(live, name):
    """A run that will hold one sandbox in the middle of a test (for up to 10 minutes)."""
    return faultlib.hanging_run(live, name, env={"FAULT_HANG": "600"})


def _kill(run):
    run_id = run.run_id
    run.signal_group(signal.SIGKILL)
    assert run.wait(60) == -signal.SIGKILL
    return run_id


def test_reap_stale_ends_killed_runs_sandboxes_and_spares_a_live_run(live, live_settings):
    # started together: a run's own start sweeps the runs that died before it
    alive, dead = _holding(live, "alive"), _holding(live, "dead")
    for run in (alive, dead):
        run.wait_note("reached", timeout=300)
    alive_id, alive_ids = alive.run_id, sorted(n["id"] for n in alive.notes("created"))
    reapers = {
        "reap --stale": lambda: faultlib.cli(live, "reap", "--stale", *live_settings.cli_args),
        "pytest --modal-sandbox-reap": lambda: faultlib.cli(
            live,
            "--modal-sandbox=modal",
            *[f"--{k.replace('_', '-')}={v}" for k, v in live_settings.ini.items()],
            "--modal-sandbox-reap",
            pytest_option=True,
        ),
    }
    for n, (how, reap) in enumerate(reapers.items()):
        if n:  # the next dead run (the first one's end was the first reaper's to find)
            dead = _holding(live, f"dead-{n}")
            dead.wait_note("reached", timeout=300)
        dead_id = _kill(dead)
        assert live.lister.running(dead_id), "a killed run's sandbox outlives it (the lease)"
        rc, text = reap()
        assert rc == 0, f"{how}:\n{text}"
        assert "terminated 1 sandbox of stale runs on modal" in text, f"{how}:\n{text}"
        faultlib.none_running(live, dead_id, timeout=live_settings.gone_slack)
        assert sorted(live.lister.running(alive_id)) == alive_ids, f"{how} touched a live run"

    alive.signal_group(signal.SIGINT)
    assert alive.wait(120) == 2  # interrupted: its own finalizer ended its sandbox
    faultlib.none_running(live, alive_id, timeout=live_settings.gone_slack)
