"""The dead-man switch's settings and ``--modal-sandbox-reap`` reject bad values clearly."""

from __future__ import annotations

import pytest

import faultlib

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modal-sandbox-lease=0"], "--modal-sandbox-lease: '0' is not a whole number of sec"),
        (
            ["--modal-sandbox-idle-timeout=2.5"],
            "--modal-sandbox-idle-timeout: '2.5' is not a whole number of seconds",
        ),
    ],
)
def test_bad_lease_or_idle_timeout_is_a_usage_error(local_world, args, message):
    rc, text = faultlib.cli(local_world, "--modal-sandbox=local", *args, pytest_option=True)
    assert rc == 4, text
    assert message in text
    assert "Traceback" not in text


def test_ini_lease_is_named_in_the_error(local_world, tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmodal_sandbox_lease = soon\n")
    rc, text = faultlib.cli(local_world, "--modal-sandbox=local", pytest_option=True, cwd=tmp_path)
    assert rc == 4, text
    assert "ini option modal_sandbox_lease: 'soon' is not a whole number of seconds" in text
