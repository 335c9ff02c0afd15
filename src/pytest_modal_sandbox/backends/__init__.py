"""The backend protocol, and choosing a backend by name.

A backend creates, finds and terminates sandboxes; everything expressible with ``exec``
(daemons, readiness, files, logs) lives in the neutral layer above it.  Backend modules are
imported only when chosen, so an inactive plugin never imports ``modal``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BackendUnavailable, SandboxError

if TYPE_CHECKING:
    from ..spec import SandboxSpec

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSandbox",
    "Endpoint",
    "NameTaken",
    "RawExec",
    "SandboxInfo",
    "make_backend",
    "modal_credentials_configured",
    "resolve_backend_name",
]

BACKENDS = ("auto", "local", "modal", "emulator")
LOCAL_IMAGE_MODES = ("pull", "host", "auto")  # the local backend's ways to provide an image


class NameTaken(SandboxError):
    """A running sandbox of the same app already has the requested name (the claim is lost)."""


@dataclass(frozen=True)
class Endpoint:
    """How the host reaches one declared port of a sandbox."""

    port: int  # the port inside the sandbox
    kind: str  # "encrypted_ports", "unencrypted_ports" or "h2_ports"
    url: str  # works with a client's default settings
    host: str
    host_port: int


@dataclass(frozen=True)
class RawExec:
    returncode: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as a listing shows it: enough to decide whether to terminate it."""

    id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None
    created_at: float = 0.0


class BackendSandbox(Protocol):
    """One backend's handle to one sandbox."""

    id: str

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> RawExec:
        """Run ``argv`` to completion; raise ``ExecTimeout`` past ``timeout``."""
        ...

    def endpoint(self, port: int, kind: str) -> Endpoint:
        """How to reach ``port``; ``kind`` is the spec list it was declared in."""
        ...

    def finished(self) -> str | None:
        """``None`` while running, else a short description of how it ended."""
        ...

    def terminate(self, *, wait: bool = False) -> None: ...

    def release(self) -> None:
        """Drop this process's resources (tunnel listeners, heartbeats) without terminating."""
        ...

    def keep(self, seconds: float) -> None:
        """Stop tying the sandbox to this process; it lives on until ``seconds`` or its timeout."""
        ...

    def add_tags(self, tags: Mapping[str, str]) -> None:
        """Add (or overwrite) these tags, keeping the others."""
        ...

    def shell_command(self) -> str | None:
        """A command line that opens a shell in the sandbox from this machine, if there is one."""
        ...


class Backend(Protocol):
    name: str

    def header(self) -> str:
        """One line for pytest's header: which backend, and how images are provided."""
        ...

    def create(
        self,
        spec: SandboxSpec,
        *,
        tags: Mapping[str, str],
        name: str | None = None,
        shared: bool = False,
    ) -> BackendSandbox:
        """Create a sandbox (running, not yet checked for readiness).

        ``shared`` sandboxes outlive the creating process (they belong to the run, and only
        the controller terminates them).
        """
        ...

    def attach(self, sandbox_id: str) -> BackendSandbox: ...

    def from_name(self, name: str) -> BackendSandbox | None: ...

    def list(self, tags: Mapping[str, str]) -> list[SandboxInfo]:
        """Running sandboxes carrying all of ``tags``."""
        ...

    def terminate(self, sandbox_id: str) -> None:
        """Terminate by id without waiting; idempotent; unknown ids are ignored."""
        ...

    def close(self) -> None: ...


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
        try:
            from .modal import ModalBackend
        except ImportError as exc:  # the modal backend lands with its own issue
            raise BackendUnavailable(
                f"the {name!r} backend is not available in this version ({exc}); "
                "use --modal-sandbox=local"
            ) from exc
        return ModalBackend(emulator=(name == "emulator"), **options)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
