"""Options, skipping, and spec errors: behaviour that never starts a sandbox."""

from __future__ import annotations

import pytest

from inner_runs import ADDOPTS

SANDBOX_TEST = """
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

@pytest.mark.sandbox(image="debian:12")
def test_marker(sandbox):
    pass

named = sandbox_fixture(image="debian:12")

def test_named(named):
    pass

def test_plain():
    pass
"""


def test_sandbox_tests_are_skipped_without_the_flag(sbtester):
    sbtester.makepyfile(SANDBOX_TEST)
    result = sbtester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*needs a sandbox: run pytest with --modal-sandbox*"])
    result.stdout.fnmatch_lines(["modal-sandbox: off*"])


def test_skipped_under_xdist_too(sbtester):
    sbtester.makepyfile(SANDBOX_TEST)
    result = sbtester.runpytest("-n", "2", "-rs")
    result.assert_outcomes(passed=1, skipped=2)


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (["--modal-sandbox=docker"], {}, "", "--modal-sandbox: 'docker' is not a sandbox backend"),
        (
            ["--modal-sandbox"],
            {"PYTEST_MODAL_SANDBOX_BACKEND": "k8s"},
            "",
            "the PYTEST_MODAL_SANDBOX_BACKEND environment variable: 'k8s' is not a sandbox backend",
        ),
        (
            ["--modal-sandbox"],
            {},
            "modal_sandbox_backend = cloud",
            "ini option modal_sandbox_backend: 'cloud' is not a sandbox backend",
        ),
        (
            ["--modal-sandbox", "--modal-sandbox-app=bad name"],
            {},
            "",
            "--modal-sandbox-app: 'bad name' is not a valid Modal app name*",
        ),
        (
            ["--modal-sandbox", "--modal-sandbox-log-lines=lots"],
            {},
            "",
            "--modal-sandbox-log-lines: 'lots' is not a number of lines*",
        ),
        (
            ["--modal-sandbox=emulator"],
            {},
            "modal_sandbox_emulator_start_latency_ms = -5",
            "ini option modal_sandbox_emulator_start_latency_ms: '-5' is not a number of "
            "milliseconds*",
        ),
        (
            ["--modal-sandbox"],
            {},
            "modal_sandbox_ahead = -1",
            "ini option modal_sandbox_ahead: '-1' is not a number of sandboxes (>= 0) or auto",
        ),
    ],
)
def test_invalid_settings_say_where_they_came_from(sbtester, monkeypatch, args, env, ini, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sbtester.makeini(f"[pytest]\naddopts = {ADDOPTS}\n{ini}\n")
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_cli_backend_beats_env_and_ini(sbtester, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_BACKEND", "k8s")  # invalid, but overridden
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local")
    result.assert_outcomes(passed=1)


BAD_SPECS = """
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

@pytest.mark.sandbox(imgae="debian:12")
def test_unknown_field(sandbox):
    pass

@pytest.mark.sandbox(unencrypted_ports=[70000])
def test_port_range(sandbox):
    pass

@pytest.mark.sandbox(encrypted_ports=[80], h2_ports=[80])
def test_port_twice(sandbox):
    pass

@pytest.mark.sandbox(daemons=[Daemon("a", "x"), Daemon("a", "y")])
def test_dup_daemon(sandbox):
    pass

@pytest.mark.sandbox(daemons=[Daemon("a", "")])
def test_empty_command(sandbox):
    pass

@pytest.mark.sandbox(env={"not-ok": "1"})
def test_env_key(sandbox):
    pass

@pytest.mark.sandbox(workdir="relative")
def test_workdir(sandbox):
    pass

@pytest.mark.sandbox(timeout=0)
def test_timeout(sandbox):
    pass

@pytest.mark.sandbox(daemons=[Daemon("w", "x", ready=Probe.http(8080))])
def test_probe_port(sandbox):
    pass

@pytest.mark.sandbox(timeout="long")
def test_type(sandbox):
    pass

@pytest.mark.sandbox("debian:12")
def test_positional(sandbox):
    pass

@pytest.mark.parametrize("sandbox", ["debian:12"], indirect=True)
def test_bad_param(sandbox):
    pass

broken = sandbox_fixture(scope="module", image="debian:12", idle_timeout=-1)

def test_factory_field(broken):
    pass

typo = sandbox_fixture(image="debian:12", daemon=[])

def test_factory_unknown(typo):
    pass
"""

EXPECTED = [
    "*test_unknown_field*unknown field 'imgae' (did you mean 'image'?)*",
    "*test_port_range*unencrypted_ports[[]0[]]: is outside 1..65535 (got 70000)*",
    "*test_port_twice*h2_ports[[]0[]]: is already declared in encrypted_ports (got 80)*",
    "*test_dup_daemon*daemons[[]1[]].name: is a duplicate daemon name (got 'a')*",
    "*test_empty_command*daemons[[]0[]] (a).command: must not be empty*",
    "*test_env_key*env key: must be an identifier*'not-ok'*",
    "*test_workdir*workdir: must be an absolute path (got 'relative')*",
    "*test_timeout*timeout: must be positive (got 0)*",
    "*test_probe_port*ready.port: is not declared*",
    "*test_type*timeout: must be a number of seconds (got 'long')*",
    "*test_positional*keyword fields only*",
    "*test_bad_param*must be a dict of sandbox fields*",
    "*sandbox fixture 'broken': idle_timeout: must be positive (got -1)*",
    "*sandbox fixture 'typo': unknown field 'daemon'*'daemons'*",
]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_each_bad_spec_is_one_clean_error_per_test(sbtester, xdist):
    sbtester.makepyfile(BAD_SPECS)
    result = sbtester.runpytest("--modal-sandbox=local", "-rE", *xdist)
    result.assert_outcomes(errors=len(EXPECTED))
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    assert "Traceback" not in out and "spec.py:" not in out  # pytrace=False: no internals
    result.stdout.fnmatch_lines_random(EXPECTED)


@pytest.fixture
def no_modal_credentials(tmp_path, monkeypatch):
    """No token in the environment and no ~/.modal.toml."""
    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_SERVER_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))


def test_modal_without_credentials_is_one_clear_error_per_test(sbtester, no_modal_credentials):
    sbtester.makepyfile("def test_a(sandbox): pass\ndef test_b(sandbox): pass\n")
    # a process of its own: modal reads ~/.modal.toml when imported, and this one imported it
    result = sbtester.runpytest_subprocess("--modal-sandbox=modal")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*Modal credentials are not configured: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, "
            "or run `modal token new`*"
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_auto_is_local_without_credentials(sbtester, no_modal_credentials):
    sbtester.makepyfile("def test_x(sandbox):\n    assert sandbox.backend == 'local'\n")
    result = sbtester.runpytest("--modal-sandbox")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["modal-sandbox: local (bubblewrap)*"])


def test_auto_is_modal_with_credentials(sbtester, state_dir, monkeypatch):
    from pytest_modal_sandbox.emulator import EmulatorProcess

    with EmulatorProcess(state_dir=state_dir / "emulator") as emulator:
        for key, value in emulator.client_env().items():
            monkeypatch.setenv(key, value)
        sbtester.makepyfile("def test_x(sandbox):\n    assert sandbox.backend == 'modal'\n")
        # a process of its own: modal keeps the client it makes from the environment for good
        result = sbtester.runpytest_subprocess("--modal-sandbox")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["modal-sandbox: modal (app pytest-modal-sandbox*"])


@pytest.fixture
def no_bubblewrap(tmp_path, monkeypatch):
    """A PATH on which bwrap (and everything else) cannot be found."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_local_without_bubblewrap_is_one_clear_error_per_test(sbtester, no_bubblewrap):
    sbtester.makepyfile("def test_a(sandbox): pass\ndef test_b(sandbox): pass\n")
    # a process of its own: one that has found bubblewrap (this one) does not look again
    result = sbtester.runpytest_subprocess("--modal-sandbox=local")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*bubblewrap*apt*install*bubblewrap*"])
    assert "Traceback" not in result.stdout.str()


def test_emulator_without_bubblewrap_is_a_usage_error(sbtester, no_bubblewrap):
    sbtester.makepyfile("def test_a(sandbox): pass\n")
    # a process of its own: one started on a machine without bubblewrap
    result = sbtester.runpytest_subprocess("--modal-sandbox=emulator")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--modal-sandbox=emulator: *bubblewrap*"])


EMULATOR_COSTS = """
import os
from pathlib import Path

def test_costs(sandbox):
    # the run's emulator is a child of this pytest process; its command line has the costs
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(status.read_text().split("PPid:")[1].split()[0])
            argv = (status.parent / "cmdline").read_bytes().split(b"\\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"pytest_modal_sandbox.emulator" in argv:
            assert argv[argv.index(b"--latency-ms") + 1] == b"5.0"
            assert argv[argv.index(b"--start-latency-ms") + 1] == b"300.0"
            break
    else:
        raise AssertionError("no emulator child process")
    assert sandbox.exec("echo", "up").stdout == "up\\n"  # waits out the start latency
"""


def test_emulator_costs_reach_the_emulator(sbtester):
    sbtester.makeini(
        f"[pytest]\naddopts = {ADDOPTS}\nmodal_sandbox_local_images = host\n"
        "modal_sandbox_emulator_start_latency_ms = 300\n"
    )
    sbtester.makepyfile(EMULATOR_COSTS)
    # a process of its own: the check looks for the emulator among the run's children, and
    # this process has others (the fault suite's session emulator, when it ran here)
    result = sbtester.runpytest_subprocess(
        "--modal-sandbox=emulator", "--modal-sandbox-emulator-latency-ms=5"
    )
    result.assert_outcomes(passed=1)
