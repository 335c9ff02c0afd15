"""Choosing a backend by name; the protocol itself is in :mod:`.protocol`.

Backend modules are imported only when chosen, so an inactive plugin never imports ``modal``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable
from .protocol import Backend

__all__ = [
    "BACKENDS",
    "make_backend",
    "modal_credentials_configured",
    "resolve_backend_name",
]

BACKENDS = ("auto", "local", "modal", "emulator")


def modal_credentials_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """True when Modal credentials exist (env vars or a token in ~/.modal.toml), without
    importing modal."""
    if environ.get("MODAL_TOKEN_ID") and environ.get("MODAL_TOKEN_SECRET"):
        return True
    path = Path(environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    try:
        text = path.read_text()
    except OSError:
        return False
    return "token_id" in text and "token_secret" in text


def resolve_backend_name(name: str) -> str:
    """``auto`` becomes ``modal`` when credentials are configured, else ``local``."""
    if name == "auto":
        return "modal" if modal_credentials_configured() else "local"
    return name


def make_backend(name: str, **options: Any) -> Backend:
    """Instantiate a backend by name (``auto`` resolved first); options are backend-specific."""
    name = resolve_backend_name(name)
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(**options)
    if name in ("modal", "emulator"):
        from .modal import ModalBackend

        return ModalBackend(emulator=(name == "emulator"), **options)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
