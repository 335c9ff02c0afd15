"""Start-up failures, sharing and cleanup, end to end on every offline backend.

The ``state_dir`` fixture fails any test that leaves a sandbox or a sandbox process behind.
"""

from __future__ import annotations

import json

from inner_runs import ADDOPTS

FAILURES = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe

@pytest.mark.sandbox(daemons=[
    Daemon("crasher", "echo about to fail; echo details >&2; exit 3", ready=Probe.tcp(8000)),
])
def test_daemon_exits(sandbox):
    pass

@pytest.mark.sandbox(daemons=[
    Daemon("slow", "echo still booting; sleep 600", ready=Probe.tcp(8000, timeout=1.5)),
])
def test_never_ready(sandbox):
    pass

@pytest.mark.sandbox(daemons=[
    Daemon("quitter", "echo bye; exit 0", ready=Probe.log("never printed")),
])
def test_log_probe_daemon_exits(sandbox):
    pass

@pytest.mark.sandbox(daemons=[
    Daemon("web", "echo up; sleep 600", ready=Probe.http(8080, timeout=1.5)),
], encrypted_ports=[8080])
def test_http_never_ready(sandbox):
    pass

def test_failing_test_still_cleans_up(sandbox):
    assert sandbox.exec("false").returncode == 0

@pytest.mark.sandbox(timeout=-1)
def test_spec_error(sandbox):
    pass
"""


def test_start_failures_are_clean_errors_with_the_log(sbtester, backend):
    sbtester.makepyfile(test_failures=FAILURES)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-rfE")
    result.assert_outcomes(errors=5, failed=1)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    result.stdout.fnmatch_lines_random(
        [
            "*daemon 'crasher' exited with code 3 before it was ready (waiting for tcp port 8000)*",
            "about to fail",
            "details",
            "*daemon 'slow' was not ready after 1.5s (waiting for tcp port 8000)*",
            "still booting",
            "*daemon 'quitter' exited with code 0 before it was ready*",
            "*daemon 'web' was not ready after 1.5s (waiting for http GET / on port 8080*",
            "*timeout: must be positive (got -1)*",
        ]
    )


SHARED = r"""
import os, pathlib
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

shared = sandbox_fixture(scope="session", share="run",
                         daemons=[Daemon("d", "sleep 600", ready=Probe.exec("true"))])
per_worker = sandbox_fixture(scope="session", share="worker")

@pytest.mark.parametrize("n", range(8))
def test_uses_both(shared, per_worker, n):
    out = pathlib.Path(os.environ["RECORD_DIR"]) / f"{os.getpid()}-{n}.json"
    out.write_text('{"shared": "%s", "worker": "%s"}' % (shared.id, per_worker.id))
    assert shared.exec("true").returncode == 0
"""


def test_share_run_is_one_sandbox_for_all_workers(sbtester, backend, tmp_path, monkeypatch):
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(records))
    sbtester.makepyfile(test_shared=SHARED)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-n", "2")
    result.assert_outcomes(passed=8)
    seen = [json.loads(p.read_text()) for p in records.iterdir()]
    pids = {p.name.split("-")[0] for p in records.iterdir()}
    assert len({r["shared"] for r in seen}) == 1
    # share="worker": one per worker process, never shared between them
    assert len({r["worker"] for r in seen}) == len(pids)


def test_header_names_backend_and_image_mapping(sbtester, backend):
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    expected = {
        "local": "modal-sandbox: local (bubblewrap); images are mapped to the host filesystem*",
        "emulator": "modal-sandbox: emulator (Modal protocol at http://127.0.0.1:*",
    }[backend]
    result.stdout.fnmatch_lines([expected])


def test_ini_switch_enables_without_the_flag(sbtester, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_BACKEND", "local")
    sbtester.makeini(f"[pytest]\nmodal_sandbox = true\naddopts = {ADDOPTS}\n")
    sbtester.makepyfile("def test_x(sandbox):\n    assert sandbox.exec('true').ok\n")
    result = sbtester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["modal-sandbox: local*"])
