"""The backend protocol: what a backend and its handle to one sandbox must do.

Its own module, so the backends and the factory in ``backends/__init__.py`` import it without
importing each other.  A backend creates, finds and terminates sandboxes; everything
expressible with ``exec`` (daemons, readiness, files, logs) lives in the neutral layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import SandboxError

if TYPE_CHECKING:
    from ..authproxy import ConnectToken
    from ..images.manifest import ImageConfig
    from ..snapshot import Snapshot
    from ..spec import SandboxSpec

__all__ = [
    "ENDINGS",
    "Backend",
    "BackendSandbox",
    "ConnectTokens",
    "Ending",
    "Endpoint",
    "ImageConfigs",
    "NameTaken",
    "NativeReadiness",
    "RawExec",
    "SandboxInfo",
    "Snapshots",
    "SnapshotsCleanup",
]


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


ENDINGS = ("exited", "terminated", "timeout", "idle_timeout", "oom", "unknown")
"""How a sandbox can end: its main process exited, something terminated it, its ``timeout``,
its ``idle_timeout``, the kernel's OOM killer, or the backend cannot tell."""

_ENDING_WORDS = {
    "exited": "exited",
    "terminated": "terminated",
    "timeout": "timed out",
    "idle_timeout": "idle timeout",
    "oom": "out of memory",
    "unknown": "ended",
}


@dataclass(frozen=True)
class Ending:
    """How a sandbox ended, as far as its backend can tell (``how`` is one of ``ENDINGS``)."""

    how: str
    exit_code: int | None = None
    detail: str = ""  # the backend's own words, when they add something

    def __post_init__(self) -> None:
        if self.how not in ENDINGS:
            raise ValueError(f"unknown ending {self.how!r}; one of {', '.join(ENDINGS)}")

    def __str__(self) -> str:
        """Short: ``terminated``, ``exited (exit code 3)``, ``out of memory (exit code 137)``."""
        text = _ENDING_WORDS[self.how]
        if self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        return f"{text}: {self.detail}" if self.detail else text


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
        """Run ``argv`` to completion; raise ``ExecTimeout`` past ``timeout``, ``SandboxGone``
        when the sandbox is gone (also when it ends while the command runs: never a hang)."""
        ...

    def endpoint(self, port: int, kind: str) -> Endpoint:
        """How to reach ``port``; ``kind`` is the spec list it was declared in."""
        ...

    def peer(self, port: int, kind: str) -> Endpoint:
        """Where another sandbox of the run reaches ``port`` (on Modal: the tunnel)."""
        ...

    def finished(self) -> Ending | None:
        """``None`` while running, else how it ended; raises :class:`SandboxError` when the
        backend cannot tell (e.g. it did not answer)."""
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


@runtime_checkable
class NativeReadiness(Protocol):
    """Optional for a :class:`BackendSandbox`: the backend checks readiness itself (Modal's
    readiness probe, given at create).  :func:`~pytest_modal_sandbox.daemons.start_daemons`
    then launches the daemons without waiting and asks the backend, one RPC per wait."""

    @property
    def has_native_probe(self) -> bool:
        """Whether this sandbox was created with the backend's own probe."""
        ...

    def spawn(self, argv: Sequence[str]) -> None:
        """Start ``argv`` and do not wait for it."""
        ...

    def wait_native_ready(self, timeout: float) -> bool:
        """True once the backend's probe passed, False if it has not within ``timeout``."""
        ...


@runtime_checkable
class Snapshots(Protocol):
    """Optional for a :class:`BackendSandbox`: filesystem snapshots (``Sandbox.snapshot``)."""

    def snapshot(self, *, memory: bool, keep: bool, base: str | None = None) -> Snapshot:
        """Snapshot what the sandbox wrote; ``keep``: outlive the run that took it; ``base``:
        the image reference the sandbox was started from (a clone starts from it again)."""
        ...


@runtime_checkable
class ConnectTokens(Protocol):
    """Optional for a :class:`BackendSandbox`: Modal's connect tokens (or the same gate)."""

    def connect_token(self, port: int) -> ConnectToken:
        """A URL and a bearer token that reach ``port`` in the sandbox (401 without it)."""
        ...


@runtime_checkable
class SnapshotsCleanup(Protocol):
    """Optional for a :class:`Backend` whose snapshots are this machine's to remove."""

    def remove_snapshots(self, run_id: str) -> list[str]:
        """Remove run ``run_id``'s snapshots that were not kept; returns their ids."""
        ...


@runtime_checkable
class ImageConfigs(Protocol):
    """Optional for a :class:`Backend`: the runtime config (ENTRYPOINT, CMD, env, workdir) of
    the image a spec's sandbox would run, for ``Daemon.from_image``."""

    def image_config(self, image: object) -> ImageConfig:
        """The config of ``image`` (a spec's ``image`` field) as this backend would run it;
        :class:`~pytest_modal_sandbox.errors.SpecError` saying why when it has none here."""
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
        quota_wait: float | None = None,
    ) -> BackendSandbox:
        """Create a sandbox (running, not yet checked for readiness).

        ``shared`` sandboxes outlive the creating process (they belong to the run, and only
        the controller terminates them).  ``quota_wait``: how long a create refused for a
        quota waits for a slot before :class:`~..errors.QuotaExceeded` (``None``: the
        backend's own setting; ``0``: not at all); backends without quotas ignore it.
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
