"""The supported modal range: one truth in pyproject, tox and the runtime warning."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from pytest_modal_sandbox.backends import modal as modal_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("1.6.3", True),
        ("1.6.4", True),
        ("1.6.10", True),
        ("1.6.2", False),
        ("1.7.0", False),
        ("1.5.5", False),
        ("2.0", False),
    ],
)
def test_range(version, ok):
    warning = modal_backend.check_modal_version(version)
    assert (warning is None) is ok
    if not ok:
        assert f"modal {version} is outside the range" in warning
        assert ">=1.6.3,<1.7" in warning


def test_unparsable_version_is_reported():
    assert "could not parse" in modal_backend.check_modal_version("dev")


def test_pyproject_and_tox_declare_the_same_range():
    low, high = modal_backend.SUPPORTED_MODAL
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"modal>={".".join(map(str, low))},<{".".join(map(str, high[:2]))}"' in pyproject
    tox = (ROOT / "tox.ini").read_text()
    assert re.search(rf"deps = modal=={re.escape('.'.join(map(str, low)))}\b", tox)


def test_an_unsupported_modal_warns_when_the_backend_starts(monkeypatch):
    monkeypatch.setattr(modal_backend, "check_modal_version", lambda: "modal 9.9 is outside")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Exception):  # noqa: B017 - no server here; only the warning matters
            modal_backend.ModalBackend(emulator=True)
    assert any("modal 9.9 is outside" in str(w.message) for w in caught)
