"""The live suite (``tests/live``) on every run, against an emulator standing in for Modal.

Nothing here can reach Modal's cloud, but the live suite must not rot: it is run here exactly as
a user runs it — ``pytest tests/live -m live`` — in the environment a workspace's token gives
(``MODAL_TOKEN_ID``, ``MODAL_TOKEN_SECRET`` and, here, ``MODAL_SERVER_URL`` naming an emulator
that accepts only that token).  The checks that only the real cloud can settle are deselected
by name, each with its reason, and every other check must come out as the suite declares it.
Also: how the suite skips when it is not asked for or has no credentials, and that its one
command is the same wherever it is written down.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import faultlib

ROOT = Path(__file__).resolve().parent.parent
LIVE = ROOT / "tests" / "live"
COMMAND = "pytest tests/live -m live"
LIVE_APP = "pytest-modal-sandbox-live"

# Every live check, by what it must come to against the stand-in.
PASSING = [
    "tests/live/test_live_coming.py::test_a_connect_token_reaches_the_sandbox",
    "tests/live/test_live_behaviour.py::test_behaviour_suite_on_modal",
    "tests/live/test_live_names.py::test_shared_sandbox_is_found_by_name_and_tags_list_sandboxes",
    "tests/live/test_live_reap.py::test_reap_stale_ends_killed_runs_sandboxes_and_spares_a_live_run",
    "tests/live/test_live_termination.py::test_dead_man_switch_after_sigkill_of_every_pytest_process",
    "tests/live/test_live_termination.py::test_a_sandbox_ended_from_outside_is_a_clear_error",
    "tests/live/test_live_coming.py::test_a_snapshot_starts_a_clone_of_the_prepared_sandbox",
]
# Strict xfails in tests/live until their feature is built (the reason names it).
NOT_BUILT: dict[str, str] = {}
# The checks the emulator cannot pass, for reasons that are the emulator's: deselected.
EMULATOR_CANNOT = {
    "tests/live/test_live_tunnels.py::test_tunnel_has_a_publicly_trusted_certificate": (
        "the emulator's tunnels are listeners on 127.0.0.1 (plain http, or TLS signed by the "
        "emulator's own CA): a publicly trusted certificate exists only on Modal"
    ),
}
LIVE_TESTS = len(PASSING) + len(NOT_BUILT) + len(EMULATOR_CANNOT)
# The stand-in's dead-man switch check, through the plugin's own options: seconds, not minutes.
SHORT_DEADLINES = ["--modal-sandbox-lease=1", "--modal-sandbox-idle-timeout=2"]


def _live_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The live suite, as a process of its own: it reaches Modal through modal's environment
    client, which modal makes once per process and keeps for good."""
    return pytester.runpytest_subprocess(str(LIVE), "-p", "no:cacheprovider", *args, timeout=900)


def _skipping_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The live suite where it runs nothing (every check skipped or deselected): in this
    process, as nothing in it reaches Modal."""
    return pytester.runpytest_inprocess(str(LIVE), "-p", "no:cacheprovider", *args)


@pytest.fixture
def no_credentials(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Modal token anywhere: neither the variables nor a config file."""
    for var in list(os.environ):
        if var.startswith("MODAL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(pytester.path / "no-modal.toml"))


@pytest.fixture
def workspace(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_credentials: None
) -> Iterator[faultlib.ModalLister]:
    """An emulator standing in for a Modal workspace, named by ``MODAL_*`` as a token would be;
    yields a lister of the live app, which must list nothing running afterwards."""
    from pytest_modal_sandbox.emulator import EmulatorProcess

    token = ("ak-live-stand-in", "as-live-stand-in")
    with EmulatorProcess(
        token_id=token[0], token_secret=token[1], state_dir=tmp_path / "emulator"
    ) as emulator:
        for key, value in emulator.client_env().items():
            monkeypatch.setenv(key, value)
        lister = faultlib.ModalLister(emulator.url, token, app=LIVE_APP)
        try:
            yield lister
            assert lister.running() == [], "the live suite left sandboxes running"
        finally:
            lister.close()


@pytest.mark.slow
def test_live_suite_against_an_emulator_standing_in_for_modal(
    pytester: pytest.Pytester, workspace: faultlib.ModalLister
) -> None:
    deselect = [f"--deselect={node}" for node in EMULATOR_CANNOT]
    result = _live_run(pytester, "-m", "live", *SHORT_DEADLINES, *deselect, "-rA")
    result.assert_outcomes(
        passed=len(PASSING), xfailed=len(NOT_BUILT), deselected=len(EMULATOR_CANNOT)
    )
    # the summary names each node relative to the run's cwd (pytester's directory)
    summary = [
        (line.split()[0], "tests/live/" + line.split()[1].split("tests/live/", 1)[-1], line)
        for line in result.outlines
        if line.startswith(("PASSED ", "XFAIL "))
    ]
    assert sorted(node for kind, node, _ in summary if kind == "PASSED") == sorted(PASSING)
    xfails = {node: line for kind, node, line in summary if kind == "XFAIL"}
    assert set(xfails) == set(NOT_BUILT)
    for node, feature in NOT_BUILT.items():
        assert feature in xfails[node] and "not built yet" in xfails[node], xfails[node]
    result.stdout.fnmatch_lines(["*gone *s after SIGKILL (lease 1s + idle timeout 2s)*"])


def test_without_credentials_every_live_check_is_skipped_saying_how_to_run_it(
    pytester: pytest.Pytester, no_credentials: None
) -> None:
    result = _skipping_run(pytester, "-m", "live", "-rs")
    result.assert_outcomes(skipped=LIVE_TESTS)
    result.stdout.fnmatch_lines(
        [f"SKIPPED *no Modal credentials configured; run `modal token new`*`{COMMAND}`*"]
    )


def test_a_plain_run_skips_the_live_suite_even_with_credentials(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_credentials: None
) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-unused")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-unused")
    result = _skipping_run(pytester, "-rs")
    result.assert_outcomes(skipped=LIVE_TESTS)
    result.stdout.fnmatch_lines([f"SKIPPED *only when selected: `{COMMAND}`*"])
    assert _skipping_run(pytester, "-m", "not live").parseoutcomes() == {"deselected": LIVE_TESTS}


def test_the_one_command_is_the_same_everywhere() -> None:
    """tox's live env, the docs page, the CI workflow and the skip reason run the same thing."""
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert f"python -m {COMMAND}" in tox["testenv:live"]["commands"]
    assert "live" not in tox["tox"]["env_list"]
    assert "MODAL_*" in tox["testenv:live"]["passenv"]
    page = (ROOT / "docs" / "how-to" / "verify-against-modal.md").read_text()
    assert f"$ {COMMAND}\n" in page
    flow = yaml.safe_load((ROOT / "docs" / "ci" / "live.yml").read_text())
    runs = [step.get("run", "") for job in flow["jobs"].values() for step in job["steps"]]
    assert any(re.search(rf"python -m {COMMAND}\b", run) for run in runs), runs
    conftest = (LIVE / "conftest.py").read_text()
    assert f'COMMAND = "{COMMAND}"' in conftest and f'LIVE_APP = "{LIVE_APP}"' in conftest
