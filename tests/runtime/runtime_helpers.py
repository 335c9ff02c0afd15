"""Helpers for the runtime tests: other processes, and finding leftover ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from proctable import processes_mentioning  # noqa: F401  (used by the runtime tests)

SRC = str(Path(__file__).resolve().parents[2] / "src")
BUSYBOX = shutil.which("busybox")


def run_python(
    code: str, *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import the package (``env``: variables
    set on top of ours)."""
    env = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", code, *args], env=env, text=True, capture_output=True, **kwargs
    )


def spawn_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _sandbox_python() -> str:
    """A Python that host-image sandboxes show: a system one.  A venv's bin/python may live
    under /tmp and an interpreter under a home directory (pyenv), both hidden in there."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    return os.path.realpath(sys.executable)


SANDBOX_PYTHON = _sandbox_python()


def build_busybox_root(root: Path) -> Path:
    """A tiny image root: a static busybox, its applets as symlinks, a little /etc and /app."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")  # type: ignore[arg-type]
    applets = os.popen(f"{BUSYBOX} --list").read().split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "app").mkdir()
    (root / "app" / "data.txt").write_text("from the image\n")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("served from the image\n")
    return root


def build_sleep_only_root(root: Path) -> Path:
    """A distroless-like root: one static program, ``/bin/sleep`` (busybox named ``sleep``),
    an ``/etc/passwd`` and data; no shell, no ``cat``, no Python."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "sleep")  # type: ignore[arg-type]
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\napp:x:1000:1000::/:\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "data").mkdir()
    (root / "data" / "config.json").write_text('{"from": "the image"}\n')
    return root
