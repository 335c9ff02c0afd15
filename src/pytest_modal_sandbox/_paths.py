"""Where the plugin keeps machine-wide state (live sandboxes, run locks) and caches (images)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

STATE_ENV = "PYTEST_MODAL_SANDBOX_STATE_DIR"
CACHE_ENV = "PYTEST_MODAL_SANDBOX_CACHE_DIR"


def state_root() -> Path:
    """Machine-wide state shared by every pytest process of this user.

    ``$PYTEST_MODAL_SANDBOX_STATE_DIR``, else ``$XDG_RUNTIME_DIR/pytest-modal-sandbox``, else
    ``<tmp>/pytest-modal-sandbox-<uid>``.  Lives on a local file system (flock must work).
    """
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR") and os.access(os.environ["XDG_RUNTIME_DIR"], os.W_OK):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "pytest-modal-sandbox"
    else:
        path = Path(tempfile.gettempdir()) / f"pytest-modal-sandbox-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cache_root() -> Path:
    """Long-lived caches (unpacked images): ``$PYTEST_MODAL_SANDBOX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/pytest-modal-sandbox``, else ``~/.cache/pytest-modal-sandbox``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "pytest-modal-sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path
