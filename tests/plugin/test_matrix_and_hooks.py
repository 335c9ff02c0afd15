"""CI matrices (image override, parametrization ids) and the plugin's own hooks."""

from __future__ import annotations

import pytest

from pytest_modal_sandbox import SandboxSpec
from pytest_modal_sandbox.matrix import parametrize_id

MATRIX = """
import pytest

@pytest.mark.parametrize(
    "sandbox",
    [{"image": "python:3.11-slim"}, {"image": "python:3.12-slim", "env": {"X": "1"}},
     {"image": "redis:7"}],
    indirect=True,
)
def test_image(sandbox):
    print("IMAGE", sandbox.spec.image)
"""


def test_image_mapping_from_the_command_line(sbtester):
    sbtester.makepyfile(MATRIX)
    result = sbtester.runpytest(  # no progress lines between a test's name and its output
        "--modal-sandbox=local",
        "-s",
        "-v",
        "--modal-sandbox-image=python:3.*=debian:12",
        "--modal-sandbox-progress=off",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*test_image[[]python:3.11-slim[]]*IMAGE debian:12*",
            "*test_image[[]python:3.12-slim-env=X=1[]]*IMAGE debian:12*",
            "*test_image[[]redis:7[]]*IMAGE redis:7*",
        ]
    )


def test_plain_replacement_from_the_environment(sbtester, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_IMAGE", "alpine:3.20")
    sbtester.makepyfile(MATRIX)
    result = sbtester.runpytest("--modal-sandbox=local", "-s")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("IMAGE alpine:3.20") == 3


def test_cli_beats_environment(sbtester, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_IMAGE", "=broken")
    sbtester.makepyfile(MATRIX)
    result = sbtester.runpytest("--modal-sandbox=local", "-s", "--modal-sandbox-image=busybox")
    result.assert_outcomes(passed=3)
    assert result.stdout.str().count("IMAGE busybox") == 3


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--modal-sandbox-image=a", "--modal-sandbox-image=b"], "", "--modal-sandbox-image: two"),
        (["--modal-sandbox-image=x="], "", "--modal-sandbox-image: 'x=' is not NEW or OLD=NEW"),
        ([], "=new", "PYTEST_MODAL_SANDBOX_IMAGE environment variable: '=new' is not NEW"),
    ],
)
def test_bad_image_override_is_a_usage_error(sbtester, monkeypatch, args, env, message):
    if env:
        monkeypatch.setenv("PYTEST_MODAL_SANDBOX_IMAGE", env)
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_parametrize_ids_are_stable_and_readable():
    assert parametrize_id({"image": "python:3.12-slim"}) == "python:3.12-slim"
    assert parametrize_id({"image": "redis:7", "timeout": 60}) == "redis:7-timeout=60"
    assert (
        parametrize_id(SandboxSpec(image="pg:16", env={"B": "2", "A": "1"})) == "pg:16-env=A=1,B=2"
    )
    assert parametrize_id({"not_a_field": 1}) is None
    assert parametrize_id("plain") is None


def test_ids_agree_across_xdist_workers(sbtester):
    sbtester.makepyfile(MATRIX)
    result = sbtester.runpytest("--modal-sandbox=local", "-n", "2")
    result.assert_outcomes(passed=3)  # xdist errors out if workers collected different ids


HOOKS_CONFTEST = """
import pytest

EVENTS = []

def pytest_configure(config):
    config.addinivalue_line("markers", "bigger: change the spec in a hook")

def pytest_modal_sandbox_spec(spec, request):
    if request.node.get_closest_marker("bigger"):
        return spec.replace(env={**spec.env, "HOOKED": "yes"})
    return None

def pytest_modal_sandbox_created(sandbox):
    EVENTS.append(("created", sandbox.id, sandbox.timings.ready is None))

def pytest_modal_sandbox_ready(sandbox):
    EVENTS.append(("ready", sandbox.id, sandbox.timings.ready is not None))

def pytest_modal_sandbox_before_terminate(sandbox, report):
    outcome = None if report is None else report.outcome
    EVENTS.append(("before_terminate", sandbox.id, sandbox.finished() is None, outcome))

def pytest_sessionfinish(session):
    for event in EVENTS:
        print("EVENT", *event)
"""

HOOKS_TESTS = """
import pytest

@pytest.mark.bigger
def test_spec_hook(sandbox):
    assert sandbox.exec("sh", "-c", "echo $HOOKED").stdout == "yes\\n"

def test_fails(sandbox):
    assert False
"""


def test_hooks_are_called_in_order(sbtester, backend):
    sbtester.makeconftest(HOOKS_CONFTEST)
    sbtester.makepyfile(HOOKS_TESTS)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-s")
    result.assert_outcomes(passed=1, failed=1)
    lines = [line[line.index("EVENT") :].split() for line in result.outlines if "EVENT" in line]
    kinds = [line[1] for line in lines]
    assert kinds == ["created", "ready", "before_terminate"] * 2
    # created before ready; still running at before_terminate; report is the call report
    assert all(line[3] == "True" for line in lines)
    assert [line[4] for line in lines if line[1] == "before_terminate"] == ["passed", "failed"]
    assert lines[0][2] == lines[1][2] == lines[2][2]


def test_spec_hook_must_return_a_spec(sbtester):
    sbtester.makeconftest("def pytest_modal_sandbox_spec(spec, request):\n    return 'x'\n")
    sbtester.makepyfile("def test_x(sandbox): pass")
    result = sbtester.runpytest("--modal-sandbox=local")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*pytest_modal_sandbox_spec hook returned 'x', not a SandboxSpec*"]
    )


def test_a_raising_ready_hook_still_terminates_the_sandbox_at_once(sbtester, backend):
    sbtester.makeconftest(
        "def pytest_modal_sandbox_ready(sandbox):\n    raise RuntimeError('not today')\n"
    )
    sbtester.makepyfile("def test_x(sandbox):\n    pass\n")
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: not today*"])
    # ended by the fixture's teardown, not found running by the end-of-run sweep
    result.stdout.no_fnmatch_line("*end of run: terminated*")


def test_before_terminate_is_not_called_where_nothing_is_terminated(
    sbtester, tmp_path, monkeypatch
):
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("CALLS", str(calls))
    sbtester.makeconftest(
        "import os, pathlib\n"
        "def pytest_modal_sandbox_before_terminate(sandbox, report):\n"
        "    pathlib.Path(os.environ['CALLS'], str(os.getpid())).write_text(sandbox.id)\n"
    )
    sbtester.makepyfile(
        "import pytest\n"
        "from pytest_modal_sandbox import sandbox_fixture\n"
        "shared = sandbox_fixture(scope='session', share='run')\n"
        "@pytest.mark.parametrize('n', range(4))\n"
        "def test_x(shared, n):\n    pass\n"
    )
    result = sbtester.runpytest("--modal-sandbox=local", "-n", "2")
    result.assert_outcomes(passed=4)
    assert list(calls.iterdir()) == []  # workers only let go; the controller's sweep ends it


def test_a_start_error_is_not_called_a_spec_error(sbtester):
    sbtester.makepyfile(
        "import pytest\n"
        "from pytest_modal_sandbox import Daemon, Probe\n"
        "@pytest.mark.sandbox(daemons=[Daemon('d', 'exit 1', ready=Probe.tcp(1))])\n"
        "def test_x(sandbox):\n    pass\n"
    )
    result = sbtester.runpytest("--modal-sandbox=local")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["sandbox of test_a_start_error*::test_x: daemon 'd' exited*"])
