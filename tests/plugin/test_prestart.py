"""Concurrent start of session- and module-scoped sandbox fixtures (prestart).

Concurrency is asserted by order, not by time: with prestart every sandbox is created before
the first one is ready (each daemon takes a moment to become ready); without it they start
one after the other.  The ``state_dir`` fixture fails any test that leaves something running.
"""

from __future__ import annotations

import re

import pytest

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
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=2)
    events = _events(result.stdout.str())
    steps = [step for _, step in events]
    assert sorted(label for label, step in events if step == "created") == ["one", "three", "two"]
    assert steps[:3] == ["created"] * 3, events  # all three exist before any is ready
    assert steps.count("ready") == 3


def test_without_prestart_they_start_one_by_one(sbtester):
    sbtester.makepyfile(test_three=THREE)
    result = sbtester.runpytest_subprocess("--modal-sandbox=local", "--modal-sandbox-prestart=off")
    result.assert_outcomes(passed=2)
    assert [step for _, step in _events(result.stdout.str())] == ["created", "ready"] * 3


def test_a_run_that_stops_early_leaks_no_prestart(sbtester, backend):
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
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}", "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["modal-sandbox: box (session) not needed any more*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    # state_dir: nothing left running


def test_a_failed_prestart_is_an_error_on_every_test_using_it(sbtester, backend):
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
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}", "-rE")
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert out.count("sandbox fixture 'box': daemon 'crasher' exited with code 3") >= 2
    assert "about to fail" in out
    result.stdout.fnmatch_lines(["modal-sandbox: box (session) FAILED after *s: daemon 'crasher'*"])


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
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=1)
    # the prestart (unhooked spec) and the fixture's own; both ended
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
def test_module_scoped_sandboxes_per_module(sbtester, backend, workers):
    sbtester.makepyfile(test_mod_a=MODULE, test_mod_b=MODULE)
    args = [f"--modal-sandbox={backend}"] + (
        ["-n", workers, "--dist", "loadfile"] if workers else []
    )
    result = sbtester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4)
    ids = (sbtester.path / "ids.txt").read_text().split()
    assert len(ids) == 2 and ids[0] != ids[1]
    result.stdout.fnmatch_lines(
        ["modal-sandbox: *db (module test_mod_a.py) created in *", "*4 created, 4 terminated*"]
    )


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
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"{backend}: 2 created, 2 terminated, 0 kept, 0 leaked"])
