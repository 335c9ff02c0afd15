"""Sandboxes started ahead of the tests that need them (``--modal-sandbox-ahead``).

Session- and module-scoped fixtures start concurrently; function-scoped sandboxes of the coming
tests start while a test runs.  Asserted by order, not by time: every session sandbox is
created before the first one is ready; a test's sandbox exists before that test begins.  The
``state_dir`` fixture fails any test that leaves something running.
"""

from __future__ import annotations

import re

import pytest

# The pytest layer's own logic, the same on every backend: these tests run on the local one.
PYTEST_LAYER_ONLY = pytest.mark.parametrize("backend", ["local"])

THREE = r"""
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

slow = Daemon("slow", "sleep 2; echo up; sleep 600", ready=Probe.log("up"))
one = sandbox_fixture(scope="session", daemons=[slow])
two = sandbox_fixture(scope="session", daemons=[slow])
three = sandbox_fixture(scope="session", daemons=[slow])

def test_first():
    pass

def test_all(one, two, three):
    assert len({one.id, two.id, three.id}) == 3
"""


def _events(out: str) -> list[tuple[str, str]]:
    """(label, step) in the order the progress lines were printed."""
    return re.findall(r"modal-sandbox: (\w+) \(session\) (created|ready) in", out)


def test_session_sandboxes_start_concurrently(sbtester, backend):
    sbtester.makepyfile(test_three=THREE)
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=2)
    events = _events(result.stdout.str())
    steps = [step for _, step in events]
    assert sorted(label for label, step in events if step == "created") == ["one", "three", "two"]
    assert steps[:3] == ["created"] * 3, events  # all three exist before any is ready
    assert steps.count("ready") == 3


def test_without_ahead_they_start_one_by_one(sbtester):
    sbtester.makepyfile(test_three=THREE)
    result = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-ahead=0")
    result.assert_outcomes(passed=2)
    assert [step for _, step in _events(result.stdout.str())] == ["created", "ready"] * 3


def test_a_run_that_stops_early_leaks_nothing_started_ahead(sbtester, backend):
    sbtester.makepyfile(
        r"""
        from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

        never = Daemon("never", "sleep 600", ready=Probe.log("never printed", timeout=300))
        box = sandbox_fixture(scope="session", daemons=[never])

        def test_fails_first():
            assert False

        def test_needs_box(box):
            pass
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["modal-sandbox: box (session) not needed any more*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    # state_dir: nothing left running


def test_a_failed_start_ahead_is_an_error_on_every_test_using_it(sbtester, backend):
    sbtester.makepyfile(
        r"""
        import pytest
        from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

        box = sandbox_fixture(
            scope="session",
            daemons=[Daemon("crasher", "echo about to fail; exit 3", ready=Probe.tcp(8000))],
        )

        @pytest.mark.parametrize("n", [1, 2])
        def test_uses_box(box, n):
            pass

        def test_other():
            pass
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-rE")
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert out.count("sandbox fixture 'box': daemon 'crasher' exited with code 3") >= 2
    assert "about to fail" in out
    result.stdout.fnmatch_lines(["modal-sandbox: box (session) FAILED after *s: daemon 'crasher'*"])


@PYTEST_LAYER_ONLY
def test_a_spec_hook_gets_its_own_sandbox(sbtester, backend):
    sbtester.makeconftest(
        """
        def pytest_modal_sandbox_spec(spec, request):
            if request.fixturename == "box":
                return spec.replace(env={"HOOKED": "yes"})
        """
    )
    sbtester.makepyfile(
        """
        from pytest_modal_sandbox import sandbox_fixture

        box = sandbox_fixture(scope="session", env={"HOOKED": "no"})

        def test_hooked(box):
            assert box.exec("sh", "-c", "echo $HOOKED").stdout == "yes\\n"
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=1)
    # the one started ahead (unhooked spec) and the fixture's own; both ended
    result.stdout.fnmatch_lines([f"{backend}: 2 created, 2 terminated, 0 kept, 0 leaked"])


MODULE = r"""
from pytest_modal_sandbox import sandbox_fixture

db = sandbox_fixture(scope="module")
cache = sandbox_fixture(scope="module")
seen = []

def test_one(db, cache):
    seen.append((db.id, cache.id))

def test_two(db, cache):
    seen.append((db.id, cache.id))
    assert seen[0] == seen[1] and db.id != cache.id
    with open("ids.txt", "a") as f:
        f.write(db.id + "\n")
"""


@pytest.mark.parametrize("workers", [None, "2"], ids=["no-xdist", "n2"])
@PYTEST_LAYER_ONLY
def test_module_scoped_sandboxes_per_module(sbtester, backend, workers):
    sbtester.makepyfile(test_mod_a=MODULE, test_mod_b=MODULE)
    args = [f"--modal-sandbox={backend}"] + (
        ["-n", workers, "--dist", "loadfile"] if workers else []
    )
    result = sbtester.runpytest(*args)
    result.assert_outcomes(passed=4)
    ids = (sbtester.path / "ids.txt").read_text().split()
    assert len(ids) == 2 and ids[0] != ids[1]
    result.stdout.fnmatch_lines(
        ["modal-sandbox: *db (module test_mod_a.py) created in *", "*4 created, 4 terminated*"]
    )


@PYTEST_LAYER_ONLY
def test_indirect_parametrization_of_a_session_fixture(sbtester, backend):
    sbtester.makepyfile(
        """
        import pytest
        from pytest_modal_sandbox import sandbox_fixture

        box = sandbox_fixture(scope="session")

        @pytest.mark.parametrize(
            "box", [{"env": {"ROW": "a"}}, {"env": {"ROW": "b"}}], indirect=True
        )
        def test_rows(box):
            assert box.exec("sh", "-c", "echo $ROW").stdout.strip() in ("a", "b")
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"{backend}: 2 created, 2 terminated, 0 kept, 0 leaked"])


NEXT = r"""
import time

from pytest_modal_sandbox.lifecycle.tags import RUN_TAG, TEST_TAG
from pytest_modal_sandbox.session import session_of


def running_for(request, nodeid):
    run = session_of(request.config).run
    return [i.id for i in run.backend.list({RUN_TAG: run.run_id, TEST_TAG: nodeid})]


def wait_until(check, what):
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def next_test_has_its_sandbox(request):
    items = request.session.items
    i = items.index(request.node)
    if i + 1 < len(items):  # started ahead while this test runs, with nothing to prompt it
        nodeid = items[i + 1].nodeid
        wait_until(lambda: running_for(request, nodeid), f"no sandbox for {nodeid}")
"""

EACH_GETS_ITS_OWN = r"""
import pytest
from helpers import next_test_has_its_sandbox

pytestmark = pytest.mark.sandbox(workdir="/tmp", env={"WHO": "module"})


def who(sandbox):
    return sandbox.exec("sh", "-c", 'echo "$WHO $(pwd)"').stdout.strip()


@pytest.mark.sandbox(env={"WHO": "a"})
def test_a(sandbox, request):
    assert who(sandbox) == "a /tmp" and sandbox.spec.image == "debian:12"
    next_test_has_its_sandbox(request)


@pytest.mark.parametrize(
    "sandbox", [{"env": {"WHO": "b1"}}, {"env": {"WHO": "b2"}}], indirect=True, ids=["b1", "b2"]
)
def test_b(sandbox, request):
    assert who(sandbox) == f"{request.node.callspec.id} /tmp"
    next_test_has_its_sandbox(request)


class TestC:
    pytestmark = pytest.mark.sandbox(env={"WHO": "c"})

    def test_c(self, sandbox, request):
        assert who(sandbox) == "c /tmp" and sandbox.spec.image == "debian:12"
"""


def _ahead_counts(out: str) -> tuple[int, int, int]:
    found = re.search(r"started ahead: (\d+), used (\d+), wasted (\d+)", out)
    assert found, out
    started, used, wasted = (int(n) for n in found.groups())
    return started, used, wasted


@PYTEST_LAYER_ONLY
def test_each_test_gets_the_sandbox_started_ahead_for_it(sbtester, backend):
    """Markers merged, indirect parameters and the image override: each test's own spec."""
    sbtester.makepyfile(helpers=NEXT, test_each=EACH_GETS_ITS_OWN)
    result = sbtester.runpytest(
        f"--modal-sandbox={backend}", "--modal-sandbox-ahead=2", "--modal-sandbox-image=debian:12"
    )
    result.assert_outcomes(passed=4)
    assert _ahead_counts(result.stdout.str()) == (4, 4, 0)
    result.stdout.fnmatch_lines([f"{backend}: 4 created, 4 terminated, 0 kept, 0 leaked"])


SKIPPED_AND_STOPPED = r"""
import pytest
from helpers import next_test_has_its_sandbox, running_for, wait_until


@pytest.fixture
def skipped_first():
    pytest.skip("skipped in a fixture set up before its sandbox")


def test_1(sandbox, request):
    next_test_has_its_sandbox(request)


def test_2_skipped(skipped_first, sandbox):
    pass


def test_3(sandbox, request):
    # the sandbox started ahead for the skipped test ended when that test was over
    skipped = request.session.items[1].nodeid
    wait_until(lambda: not running_for(request, skipped), f"{skipped}'s sandbox still runs")
    next_test_has_its_sandbox(request)


def test_4_fails(sandbox, request):
    next_test_has_its_sandbox(request)
    assert False, "stop here (-x)"


def test_5_never_runs(sandbox):
    pass


def test_6_never_runs(sandbox):
    pass
"""


def test_sandboxes_of_tests_that_do_not_use_them_end_at_once(sbtester, backend):
    """A test skipped before its sandbox, and the tests -x never runs: what was started for
    them ends (the state_dir fixture: nothing left running)."""
    sbtester.makepyfile(helpers=NEXT, test_stops=SKIPPED_AND_STOPPED)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-ahead=2", "-x")
    result.assert_outcomes(passed=2, skipped=1, failed=1)
    started, used, wasted = _ahead_counts(result.stdout.str())
    assert used == 3 and wasted >= 2 and started == used + wasted  # skipped one, test_5 (+6)
    result.stdout.fnmatch_lines([f"{backend}: * created, * terminated, 0 kept, 0 leaked"])


@PYTEST_LAYER_ONLY
def test_a_spec_hook_sees_each_setup_once_and_its_spec_is_what_the_test_gets(sbtester, backend):
    sbtester.makeconftest(
        """
        import os

        def pytest_modal_sandbox_spec(spec, request):
            with open("hook-calls.txt", "a") as f:
                f.write(request.node.nodeid + "\\n")
            return spec.replace(env={**spec.env, "TEST": request.node.name})
        """
    )
    sbtester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_x(sandbox, n):
            assert sandbox.exec("sh", "-c", "echo $TEST").stdout == f"test_x[{n}]\\n"
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-ahead=2")
    result.assert_outcomes(passed=4)
    calls = (sbtester.path / "hook-calls.txt").read_text().split()
    assert len(calls) == len(set(calls)) == 4, calls  # once per setup, never ahead
    started, used, wasted = _ahead_counts(result.stdout.str())
    assert used == 0 and wasted == started <= 2  # the hook changed it: no more started ahead


@PYTEST_LAYER_ONLY
def test_each_xdist_worker_starts_ahead_from_its_own_queue(sbtester, backend):
    sbtester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_x(sandbox, n):
            assert sandbox.exec("true").ok
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-ahead=2", "-n", "2")
    result.assert_outcomes(passed=6)
    assert _ahead_counts(result.stdout.str()) == (6, 6, 0)
    result.stdout.fnmatch_lines([f"{backend}: 6 created, 6 terminated, 0 kept, 0 leaked"])
