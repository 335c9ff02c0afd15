"""The behaviour suite (``tests/behaviour_suite.py``) on ``--modal-sandbox=modal``: what every
offline backend is held to, held against Modal itself (in one process: the names check runs
under xdist)."""

from __future__ import annotations

import pytest

import faultlib
from behaviour_suite import SUITE, SUITE_TESTS

pytestmark = pytest.mark.live


def test_behaviour_suite_on_modal(live, live_settings):
    _, result = faultlib.run_file(live, "suite", SUITE, timeout=900, passed=SUITE_TESTS)
    result.stdout.fnmatch_lines([f"modal-sandbox: modal (app {live_settings.app}*"])
