"""Modal's failures, and the plugin surviving them (issue 10): the behaviour suite under
injected RPC faults, a create rate limit and four workers; a quota that never frees; a sandbox
ended from outside (terminated, its timeout, its idle timeout, out of memory).

The Modal path runs against emulators that inject what Modal does (``--fault-rate``,
``--create-rate``, ``--max-sandboxes``, ``EmulatorProcess.end_sandbox``); the ended-from-outside
checks run on the local backend too, with the endings it has (no OOM: the local runtime sets no
memory limit).
"""

from __future__ import annotations

import pytest

import faultlib
from behaviour_suite import SUITE, SUITE_TESTS

pytestmark = pytest.mark.faults

MARK = {"pytest-modal-sandbox": "1"}  # every sandbox the plugin creates carries this tag


def test_the_behaviour_suite_passes_under_faults_a_create_rate_and_four_workers(
    tmp_path, monkeypatch, zygote
):
    """5% of all RPCs fail (before the work, after it with the answer lost, or midway through
    a stream), creates are throttled to 3 a second, and four workers run the suite: every test
    passes, nothing is left running, and no sandbox was created twice (a create whose answer
    was lost is found by its token, not made again)."""
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    chaos = {"fault_rate": 0.05, "create_rate": 3, "seed": 10, "images": "host"}
    with faultlib.emulator_world(tmp_path, zygote, **chaos) as world:
        run = faultlib.InnerRun(world, "suite", {"test_suite.py": SUITE}, args=["-n", "4"])
        with run:
            run.expect(600, passed=SUITE_TESTS)
        run_id = run.run_id
        faultlib.none_running(world, run_id)
        assert not world.lister.running(tags=MARK)
        stats = world.emulator.stats()
        made = [note["id"] for note in run.notes("created")]
        assert len(set(made)) == len(made) == stats["sandboxes"]["created"], stats["sandboxes"]
        injected = stats["chaos"]
        assert sum(injected.get("faults", {}).values()) > 0, injected
        assert injected.get("refused", {}).get("throttled", 0) > 0, injected
        assert not faultlib.clean_up(world)


QUOTA_TESTS = r"""
from pytest_modal_sandbox import sandbox_fixture

held = sandbox_fixture(scope="module")


def test_before(held):
    assert held.exec("true").ok


def test_needs_a_second(held, sandbox):
    raise AssertionError("unreachable: the quota allows one sandbox")


def test_needs_a_second_too(held, sandbox):
    raise AssertionError("unreachable: the quota allows one sandbox")


def test_after(held):
    assert held.exec("true").ok
"""


def test_a_quota_that_never_frees_is_one_clear_error_per_test_and_the_run_goes_on(
    tmp_path, monkeypatch, zygote
):
    """One sandbox at a time (``--max-sandboxes 1``, held by a module fixture): each test that
    needs a second one waits ``quota_wait`` for a slot, then errors once, naming the quota and
    what to do; the tests around them pass."""
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    with faultlib.emulator_world(tmp_path, zygote, max_sandboxes=1, images="host") as world:
        run = faultlib.InnerRun(
            world,
            "quota",
            {"test_quota.py": QUOTA_TESTS},
            args=["-p", "no:xdist"],
            ini={"modal_sandbox_quota_wait": "1"},
            env={"COLUMNS": "1000"},  # whole lines in the short summary
        )
        with run:
            run.expect(120, passed=2, errors=2)
        out = run.output()
        for test in ("test_needs_a_second", "test_needs_a_second_too"):
            errors = [
                line
                for line in out.splitlines()
                if line.startswith(f"ERROR test_quota.py::{test} ")
            ]
            assert len(errors) == 1, out
            line = errors[0]
            assert f"sandbox of test_quota.py::{test}: creating a sandbox" in line, line
            assert "refused it for a quota of the workspace" in line, line
            assert "Sandbox limit reached" in line, line  # the server's own words
            assert "fewer xdist workers (-n)" in line and "--modal-sandbox-quota-wait" in line
        assert world.emulator.stats()["chaos"]["refused"]["quota"] >= 2
        assert not faultlib.clean_up(world)


ENDED_TESTS = r"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pytest_modal_sandbox import Daemon, Probe, SandboxGone

WORDS = {
    "terminated": "was terminated from outside the test",
    "timeout": "reached its timeout of 2 s",
    "idle_timeout": "idle timeout",
    "oom": "ran out of memory",
}
ENDINGS = os.environ["ENDINGS"].split(",")
OUTSIDE = os.environ["FROM_OUTSIDE"].split(",")  # the others happen for real: short limits
LIMITS = {"timeout": {"timeout": 2}, "idle_timeout": {"idle_timeout": 2}}
CALLS = {
    "exec": lambda sb: sb.exec("true"),
    "url": lambda sb: sb.url(8000),
    "tcp": lambda sb: sb.tcp(8000),
    "read_file": lambda sb: sb.read_file("/etc/hostname"),
    "write_file": lambda sb: sb.write_file("/tmp/x", "y"),
    "logs": lambda sb: sb.logs("web"),
}

pytestmark = pytest.mark.sandbox(
    daemons=[Daemon("web", "python3 -m http.server 8000", ready=Probe.tcp(8000))],
    encrypted_ports=[8000],
)


def end_from_outside(sandbox, how):
    # another process ends it, as a script, the dashboard or Modal itself would
    if sandbox.backend == "local":
        code = (
            "import sys; from pytest_modal_sandbox.runtime import LocalRuntime; "
            "LocalRuntime().get(sys.argv[1]).terminate()"
        )
        subprocess.run([sys.executable, "-c", code, sandbox.id], check=True, timeout=60)
    else:
        from pytest_modal_sandbox.emulator.process import call_admin

        argument = json.dumps({"sandbox_id": sandbox.id, "how": how})
        call_admin(os.environ["MODAL_SERVER_URL"], "EndSandbox", argument)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(how, marks=pytest.mark.sandbox(**({} if how in OUTSIDE else LIMITS[how])))
        for how in ENDINGS
    ],
)
def test_an_ended_sandbox_is_a_prompt_clear_error(sandbox, how):
    ended = []
    if how == "idle_timeout" and how not in OUTSIDE:
        time.sleep(3.5)  # nothing runs in it: its idle timeout of 2 s ends it
        ended.append(time.monotonic())
        first = lambda: sandbox.exec("true")
    else:
        if how in OUTSIDE:
            def end():
                time.sleep(1.0)  # the command below runs by now
                end_from_outside(sandbox, how)
                ended.append(time.monotonic())

            threading.Thread(target=end, daemon=True).start()
        first = lambda: sandbox.exec("sleep", "300", timeout=120)
    started = time.monotonic()
    with pytest.raises(SandboxGone) as info:
        first()
    # the sandbox's end, not the command's own timeout of 120 s: no hang
    assert time.monotonic() - started < 60
    assert info.value.how == how, info.value
    assert sandbox.id in str(info.value) and WORDS[how] in str(info.value), info.value
    for name, call in CALLS.items():
        t0 = time.monotonic()
        with pytest.raises(SandboxGone, match=WORDS[how]):
            call(sandbox)
        assert time.monotonic() - t0 < 10, name
    assert sandbox.finished() is not None
"""


def test_a_sandbox_ended_from_outside_is_a_prompt_clear_error(world):
    """Ended while a command runs in it (or, idle, before the next one): that command and
    every later call (exec, url, tcp, files, logs) is a ``SandboxGone`` naming the sandbox and
    how it ended, at once — never a wait for the command's own timeout."""
    if world.backend == "local":
        endings, outside = ["terminated", "timeout", "idle_timeout"], ["terminated"]
    else:
        endings = ["terminated", "timeout", "idle_timeout", "oom"]
        outside = ["terminated", "idle_timeout", "oom"]  # the owner's heartbeats keep it busy
    run = faultlib.InnerRun(
        world,
        "ended",
        {"test_ended.py": ENDED_TESTS},
        args=["-p", "no:xdist"],
        env={"ENDINGS": ",".join(endings), "FROM_OUTSIDE": ",".join(outside)},
    )
    with run:
        run.expect(300, passed=len(endings))
