"""``images {pull,list,prune}`` through ``cli.main`` and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_modal_sandbox.images.cli import main
from registry import LocalRegistry, file


def test_pull_list_prune(
    registry: LocalRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))  # its snapshots
    image = registry.push_image("cli/app", "v1", [[file("x", "y")]])
    cache = str(tmp_path / "c")
    assert main(["--cache-dir", cache, "pull", image.reference]) == 0
    out = capsys.readouterr().out
    assert image.reference in out and image.digest in out
    assert main(["--cache-dir", cache, "list"]) == 0
    out = capsys.readouterr().out
    assert image.config_digest[:19] in out and image.reference in out and "1 B" in out
    assert main(["--cache-dir", cache, "prune", "--unused-for", "1d"]) == 0
    assert "removed 0 image(s)" in capsys.readouterr().out
    assert main(["--cache-dir", cache, "prune", "--dry-run"]) == 0
    assert "would remove 1 image(s)" in capsys.readouterr().out
    assert main(["--cache-dir", cache, "prune"]) == 0
    assert "removed 1 image(s)" in capsys.readouterr().out
    assert main(["--cache-dir", cache, "list"]) == 0
    assert "no images cached" in capsys.readouterr().out


def test_errors_are_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = str(tmp_path / "c")
    assert main(["--cache-dir", cache, "pull", "Bad/Ref"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid image reference 'Bad/Ref'") and "Traceback" not in err
    assert main(["--cache-dir", cache, "pull", "x", "--platform", "nonsense"]) == 1
    assert "invalid platform 'nonsense'" in capsys.readouterr().err
    assert main(["--cache-dir", cache, "prune", "--unused-for", "soon"]) == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err
    assert main([]) == 2
    (tmp_path / "a-file").write_text("")
    assert main(["--cache-dir", str(tmp_path / "a-file"), "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot use the image cache" in err and "PYTEST_MODAL_SANDBOX_CACHE_DIR" in err


def test_runs_as_a_module(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("cli/module", "v1", [[file("x", "y")]])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_modal_sandbox.images.cli",
            "--cache-dir",
            str(tmp_path / "c"),
            "pull",
            image.reference,
            f"{registry.host}/cli/missing:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert image.reference in proc.stdout
    assert f"error: image {registry.host}/cli/missing does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
