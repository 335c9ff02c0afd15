"""Helpers for the runtime tests: run Python code in another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_python(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import the package."""
    env = dict(os.environ, PYTHONPATH=SRC)
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


# A Python for use *inside* host-mode sandboxes: the real interpreter, since a venv's
# bin/python may live under /tmp, which is a private tmpfs in there.
SANDBOX_PYTHON = os.path.realpath(sys.executable)
