"""``--modal-sandbox-keep-on-failure``: exactly the failed test's sandbox stays, the report says
how to reach it, and a later run's sweep ends it once its deadline has passed."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_modal_sandbox.lifecycle.tags import KEEP_TAG, TEST_TAG
from pytest_modal_sandbox.reporting.keep import keep_seconds
from pytest_modal_sandbox.sandbox import Sandbox
from pytest_modal_sandbox.spec import SandboxSpec

KEEP = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe
from pytest_modal_sandbox.lifecycle.tags import KEEP_TAG, RUN_TAG, TEST_TAG
from pytest_modal_sandbox.session import session_of

@pytest.mark.sandbox(encrypted_ports=[8000],
                     daemons=[Daemon("web", "python3 -m http.server 8000", ready=Probe.tcp(8000))])
def test_a_fails(sandbox):
    assert sandbox.exec("false").ok

def test_b_passes(sandbox):
    assert sandbox.exec("true").ok

def test_c_only_the_failed_one_is_kept(request):
    m = session_of(request.config).run
    kept = [i for i in m.backend.list({RUN_TAG: m.run_id}) if KEEP_TAG in i.tags]
    assert [i.tags[TEST_TAG] for i in kept] == ["test_keep.py::test_a_fails"]
"""


def _running(state_dir: Path, sub: str) -> list:
    from pytest_modal_sandbox.runtime import LocalRuntime

    path = state_dir / sub
    return LocalRuntime(path).list() if path.exists() else []


def test_keeps_only_the_failed_tests_sandbox(sbtester, backend):
    sbtester.makepyfile(test_keep=KEEP)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-keep-on-failure=0.2")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "KEPT ALIVE for debugging until *UTC (0.2 min), then swept:",
            "  id       sb-* (run *)",
            "  tunnels  8000 -> http://127.0.0.1:*",
        ]
    )
    result.stdout.fnmatch_lines([f"{backend}: 2 created, 1 terminated, 1 kept, 0 leaked"])
    result.stdout.fnmatch_lines(["  kept until *: sb-* (test_keep.py::test_a_fails)*"])
    if backend == "local":  # the emulator's sandboxes end with its run; a local one is still up
        command = re.search(
            r"  end now  python (-m pytest_modal_sandbox reap .*)", result.stdout.str()
        )
        assert command is not None
        reaped = subprocess.run(
            [sys.executable, *command.group(1).split()], capture_output=True, text=True, check=True
        )
        assert "terminated 1 sandbox" in reaped.stdout


@pytest.mark.slow
def test_next_run_sweeps_a_kept_sandbox_after_its_deadline(sbtester, state_dir):
    sbtester.makepyfile(test_keep=KEEP)
    first = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-keep-on-failure=0.2")
    first.assert_outcomes(passed=2, failed=1)
    first.stdout.fnmatch_lines(
        [
            "  shell    */nsenter -t * -- sh",
            "  end now  python -m pytest_modal_sandbox reap --run * --backend local",
        ]
    )
    kept_id = re.search(r"  id       (sb-\S+) \(run", first.stdout.str()).group(1)  # type: ignore[union-attr]
    running = _running(state_dir, "local")
    assert [sb.id for sb in running] == [kept_id]
    tags = running[0].tags()
    assert tags[TEST_TAG] == "test_keep.py::test_a_fails"
    until = float(tags[KEEP_TAG])

    sbtester.makepyfile(test_keep="def test_nothing():\n    pass\n")
    if time.time() < until - 3:  # a run before the deadline leaves it alone
        sbtester.runpytest("--modal-sandbox=local").assert_outcomes(passed=1)
        assert [sb.id for sb in _running(state_dir, "local")] == [kept_id]

    while time.time() <= until:
        time.sleep(0.2)
    after = sbtester.runpytest("--modal-sandbox=local")
    after.assert_outcomes(passed=1)
    after.stdout.fnmatch_lines(
        [f"*stale run *(kept on failure, past its deadline): terminated 1 sandbox: {kept_id}*"]
    )
    # state_dir checks that nothing is left running


def test_module_scoped_sandboxes_are_not_kept(sbtester, backend):
    sbtester.makepyfile(
        """
        from pytest_modal_sandbox import sandbox_fixture

        box = sandbox_fixture(scope="module")

        def test_fails(box):
            assert False
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-keep-on-failure")
    result.assert_outcomes(failed=1)
    assert "KEPT ALIVE" not in result.stdout.str()
    result.stdout.fnmatch_lines([f"{backend}: 1 created, 1 terminated, 0 kept, 0 leaked"])


def test_keep_is_bounded_by_the_sandbox_timeout() -> None:
    sb = Sandbox(object(), SandboxSpec(timeout=60), "local")  # type: ignore[arg-type]
    now = time.time()
    sb.timings.created = now - 50
    assert keep_seconds(sb, 30, now=now) == pytest.approx(10)
    assert keep_seconds(sb, 0.05, now=now) == pytest.approx(3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("--modal-sandbox-keep-on-failure=soon", "--modal-sandbox-keep-on-failure: 'soon' is not"),
        ("--modal-sandbox-keep-on-failure=-1", "--modal-sandbox-keep-on-failure: '-1' is not"),
    ],
)
def test_bad_keep_values_are_usage_errors(sbtester, value, message):
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local", value)
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_keep_from_the_environment(sbtester, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_KEEP_ON_FAILURE", "x")
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local")
    result.stderr.fnmatch_lines(
        ["*the PYTEST_MODAL_SANDBOX_KEEP_ON_FAILURE environment variable: 'x' is not*"]
    )
