"""The backend-neutral behaviour suite (``tests/behaviour_suite.py``), run through pytest on
every offline backend.

The same suite runs with ``--modal-sandbox=modal`` in ``tests/live`` — against a real Modal
workspace, and on every run against an emulator standing in for one
(``tests/test_live_suite.py``).
"""

from __future__ import annotations

from behaviour_suite import SUITE, SUITE_TESTS


def test_behaviour_suite(sbtester, backend):
    sbtester.makepyfile(test_suite=SUITE)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-v", "-rfE")
    result.assert_outcomes(passed=SUITE_TESTS)
    result.stdout.fnmatch_lines([f"modal-sandbox: {backend}*"])
