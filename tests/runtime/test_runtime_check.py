"""``LocalRuntime.check()``: missing tools and refused namespaces give the fix, not a traceback."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from runtime_helpers import SRC

CODE = """
from pytest_modal_sandbox.runtime import LocalRuntime, RuntimeUnavailable
try:
    LocalRuntime.check()
    print("OK")
except RuntimeUnavailable as exc:
    print("UNAVAILABLE", exc)
"""


def _check_with_path(path: str) -> str:
    env = {"PATH": path, "PYTHONPATH": os.pathsep.join([SRC, *sys.path[1:]])}
    done = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _bin_with(tmp_path: Path, **programs: str) -> str:
    """A PATH directory holding the named programs (real ones by path, or shell scripts)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, what in programs.items():
        if what.startswith("/"):
            os.symlink(what, d / name)
        else:
            (d / name).write_text(f"#!/bin/sh\n{what}\n")
            (d / name).chmod(stat.S_IRWXU)
    return str(d)


def test_the_real_tools_pass(runtime_available: None) -> None:
    assert _check_with_path(os.environ["PATH"]) == "OK"


def test_missing_bubblewrap_names_the_package(tmp_path: Path) -> None:
    out = _check_with_path(_bin_with(tmp_path))
    assert out.startswith("UNAVAILABLE") and "apt-get install bubblewrap" in out


def test_missing_nsenter_names_the_package(tmp_path: Path) -> None:
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    out = _check_with_path(_bin_with(tmp_path, bwrap=bwrap))
    assert out.startswith("UNAVAILABLE") and "apt-get install util-linux" in out


def test_refused_user_namespaces_name_the_sysctl(tmp_path: Path) -> None:
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    # what bubblewrap prints under Ubuntu 24.04's AppArmor restriction
    refusing = "echo 'bwrap: setting up uid map: Permission denied' >&2; exit 1"
    out = _check_with_path(_bin_with(tmp_path, bwrap=refusing, nsenter=nsenter))
    assert out.startswith("UNAVAILABLE")
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in out
    assert "kernel.unprivileged_userns_clone=1" in out
    assert "setting up uid map" in out
