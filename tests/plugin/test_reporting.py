"""Failure sections, secret scrubbing, JUnit properties and the summary, end to end.

Every test runs an inner pytest on each offline backend; the ``state_dir`` fixture fails any
test that leaves a sandbox or a sandbox process behind.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# The pytest layer's own logic, the same on every backend: these tests run on the local one.
PYTEST_LAYER_ONLY = pytest.mark.parametrize("backend", ["local"])

SECRET = "pms-SECRET-7d1e9a"
SECRET_LINE = "-----BEGIN KEY-----\nline-one-of-the-key\n-----END KEY-----"

FAILING = rf"""
import pytest
from pytest_modal_sandbox import Daemon, Probe

SECRETS = [{{"TOKEN": "{SECRET}", "PEM": {SECRET_LINE!r}}}]

@pytest.mark.sandbox(
    secrets=SECRETS,
    encrypted_ports=[8000],
    daemons=[
        Daemon("web", "echo booting; echo token=$TOKEN; printf '%s\n' \"$PEM\"; "
                      "exec python3 -m http.server 8000", ready=Probe.tcp(8000)),
        Daemon("worker", "echo worker up; sleep 600", ready=Probe.log("worker up")),
        Daemon("oneshot", "echo did it; exit 4"),
    ],
)
def test_fails(sandbox):
    token = sandbox.exec("sh", "-c", "echo $TOKEN").stdout.strip()
    print("the token is", token)
    assert token == "something else"


@pytest.mark.sandbox(
    secrets=SECRETS,
    daemons=[Daemon("crasher", "echo leaking $TOKEN; exit 3", ready=Probe.tcp(9000))],
)
def test_start_fails(sandbox):
    pass


def test_passes(sandbox):
    assert sandbox.exec("true").ok
"""


def _everything(result: pytest.RunResult, capfd: pytest.CaptureFixture[str], *files: Path) -> str:
    """All the run wrote: its own output, what its child processes (emulator, xdist workers)
    wrote straight to our file descriptors, and ``files``."""
    written = capfd.readouterr()
    texts = [result.stdout.str(), result.stderr.str(), written.out, written.err]
    return "\n".join([*texts, *(f.read_text() for f in files)])


@pytest.mark.parametrize(
    ("backend", "workers"),  # the report travels from xdist workers the same way on each backend
    [("local", None), ("local", "2"), ("emulator", None)],
    ids=["local-no-xdist", "local-n2", "emulator-no-xdist"],
)
def test_failure_report_shows_daemon_logs_with_secrets_scrubbed(sbtester, capfd, backend, workers):
    sbtester.makepyfile(test_failing=FAILING)
    junit = sbtester.path / "junit.xml"
    args = [f"--modal-sandbox={backend}", f"--junitxml={junit}", "-rA"]
    if workers:
        args += ["-n", workers]
    result = sbtester.runpytest(*args)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*- modal-sandbox: sandbox sb-* -*",
            f"backend  {backend}",
            "id       sb-*",
            "image    (default image)",
            "fixture  sandbox (function scope)",
            "timings  create *s, ready *s, test *s",
            "tunnels  8000 -> http://127.0.0.1:*",
            "daemon web: running",
            "  booting",
            "  token=***",
            "daemon worker: running",
            "  worker up",
            "daemon oneshot: exited with code 4",
            "  did it",
            # the test's own output and assertion, scrubbed
            "the token is ***",
            "E       AssertionError: assert '***' == 'something else'",
            # the start error of the other test: the daemon's log tail, scrubbed
            "*daemon 'crasher' exited with code 3 before it was ready*",
            "leaking ***",
        ]
    )
    everything = _everything(result, capfd, junit)
    assert SECRET not in everything
    assert "line-one-of-the-key" not in everything
    assert "INTERNALERROR" not in everything


@PYTEST_LAYER_ONLY
def test_log_lines_option_limits_the_tail(sbtester, backend):
    sbtester.makepyfile(
        r"""
        import pytest
        from pytest_modal_sandbox import Daemon, Probe

        @pytest.mark.sandbox(daemons=[Daemon(
            "counter", "for i in 1 2 3 4 5 6; do echo line-$i; done; echo ready; sleep 600",
            ready=Probe.log("ready"))])
        def test_fails(sandbox):
            assert False
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-log-lines=3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["  --- last 3 lines of its log ---", "  line-5", "  line-6", "  ready"]
    )
    assert "line-4" not in result.stdout.str()


@PYTEST_LAYER_ONLY
def test_setup_failure_after_the_sandbox_started_has_its_section(sbtester, backend):
    sbtester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def broken(sandbox):
            raise RuntimeError("fixture after the sandbox failed")

        def test_x(sandbox, broken):
            pass
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: fixture after the sandbox failed*", "*- modal-sandbox: sandbox sb-* -*"]
    )
    result.stdout.fnmatch_lines(["timings  create *s, ready *s, test -"])


@PYTEST_LAYER_ONLY
def test_passing_tests_get_no_section(sbtester, backend):
    sbtester.makepyfile("def test_ok(sandbox):\n    assert sandbox.exec('true').ok\n")
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-rA")
    result.assert_outcomes(passed=1)
    assert "- modal-sandbox: sandbox" not in result.stdout.str()


JUNIT = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

shared = sandbox_fixture(scope="module", unencrypted_ports=[7000])

@pytest.mark.sandbox(encrypted_ports=[8000, 8001])
def test_two(sandbox, shared):
    assert sandbox.exec("true").ok

def test_none():
    pass
"""


def test_junit_properties_name_ids_and_tunnels(sbtester, backend):
    sbtester.makepyfile(test_junit=JUNIT)
    junit = sbtester.path / "junit.xml"
    result = sbtester.runpytest(f"--modal-sandbox={backend}", f"--junitxml={junit}")
    result.assert_outcomes(passed=2)
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_two"].iter("property")}
    assert props["modal_sandbox.sandbox.id"].startswith("sb-")
    assert props["modal_sandbox.shared.id"].startswith("sb-")
    assert props["modal_sandbox.sandbox.id"] != props["modal_sandbox.shared.id"]
    assert props["modal_sandbox.sandbox.backend"] == backend
    for key in ("sandbox.tunnel.8000", "sandbox.tunnel.8001", "shared.tunnel.7000"):
        assert props[f"modal_sandbox.{key}"].startswith("http://127.0.0.1:")
    assert not list(cases["test_none"].iter("property"))


@PYTEST_LAYER_ONLY
def test_summary_counts_and_times(sbtester, backend):
    sbtester.makepyfile(
        """
        import pytest
        from pytest_modal_sandbox import sandbox_fixture

        box = sandbox_fixture(scope="session")

        @pytest.mark.parametrize("n", range(3))
        def test_x(sandbox, box, n):
            pass
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*- modal-sandbox summary -*",
            f"{backend}: 4 created, 4 terminated, 0 kept, 0 leaked",
            "  create p50 *s, max *s; ready p50 *s, max *s  (4 started)",
            "  slowest:",
            "*s  sb-*  *",
        ]
    )


@PYTEST_LAYER_ONLY
def test_summary_under_xdist_counts_every_worker(sbtester, backend):
    sbtester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_x(sandbox, n):
            pass
        """
    )
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [f"{backend}: 4 created, 4 terminated, 0 kept, 0 leaked", "  create p50 *(4 started)"]
    )


@PYTEST_LAYER_ONLY
def test_shared_sandbox_section_says_who_started_it(sbtester, backend):
    sbtester.makepyfile(
        """
        from pytest_modal_sandbox import sandbox_fixture

        shared = sandbox_fixture(scope="session", share="run")

        def test_fails(shared):
            assert False
        """
    )
    # --dist each: both workers run the test; one starts the sandbox, the other attaches
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-n", "2", "--dist", "each")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert out.count("fixture  shared (session scope)") == 2
    assert "timings  started by another process (shared), test " in out
    assert "timings  create " in out
