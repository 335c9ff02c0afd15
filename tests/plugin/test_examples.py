"""The examples that stand for a whole feature run here on every backend, as users run them
(``pytest examples``, rootdir the repository), besides ``scripts/dev.sh examples``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_your_app_and_its_database(sbtester, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EXAMPLE_DB_IMAGE", raising=False)
    for name in ("conftest.py", "test_app_and_database.py", "app"):
        source = ROOT / "examples" / name
        target = sbtester.path / "examples" / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(exist_ok=True)
            shutil.copy2(source, target)
    (sbtester.path / "tests").mkdir()
    shutil.copy2(ROOT / "tests" / "registry.py", sbtester.path / "tests" / "registry.py")
    result = sbtester.runpytest(
        "examples", f"--modal-sandbox={backend}", "--modal-sandbox-local-images=pull"
    )
    result.assert_outcomes(passed=1)
