"""Every error the plugin raises on purpose, under one base class.

Catch :class:`SandboxError` to handle them all.  Errors that wrap a backend's own exception
(a ``modal.exception.Error``, an ``OSError`` from the local runtime) keep it as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "DaemonExitedError",
    "ExecError",
    "ExecTimeout",
    "NotDeclaredError",
    "QuotaExceeded",
    "ReadinessTimeout",
    "RetriesExhausted",
    "SandboxError",
    "SandboxGone",
    "SandboxStartError",
    "SpecError",
]


class SandboxError(Exception):
    """Base class of every error raised by pytest-modal-sandbox."""


class SpecError(SandboxError, ValueError):
    """A sandbox spec (marker, fixture or ``SandboxSpec``) is invalid.

    The message names where the spec came from, the field and the offending value.
    """


class BackendUnavailable(SandboxError):
    """The chosen backend cannot run here; the message says how to fix that."""


class SandboxStartError(SandboxError):
    """A sandbox could not be created or its daemons could not be launched."""


class SandboxGone(SandboxError):
    """The sandbox no longer exists: it ended (terminated, timed out, idled out, ran out of
    memory) or never existed.

    ``how`` names how it ended when that is known (``terminated``, ``timeout``,
    ``idle_timeout``, ``oom``, ``exited``, ``unknown``); ``sandbox_id`` is its id.
    """

    def __init__(
        self, message: str, *, sandbox_id: str | None = None, how: str | None = None
    ) -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id
        self.how = how


class QuotaExceeded(SandboxStartError):
    """The backend refused a new sandbox for a quota (Modal's limit on concurrent sandboxes or
    on creates) that did not free while the plugin waited; the message names the quota and
    what to do."""


class RetriesExhausted(SandboxError):
    """A backend call kept failing with transient errors (unavailable, reset, internal) until
    its deadline; the message names the call, the attempts and the last error."""


class NotDeclaredError(SandboxError, KeyError):
    """A port (or daemon) was asked for that the spec does not declare."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DaemonExitedError(SandboxStartError):
    """A daemon exited while its readiness probe was waiting; carries its log tail."""

    def __init__(self, message: str, *, daemon: str, exit_code: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.daemon = daemon
        self.exit_code = exit_code
        self.log_tail = log_tail


class ReadinessTimeout(SandboxStartError, TimeoutError):
    """A readiness probe did not pass within its timeout; carries the daemon's log tail."""

    def __init__(self, message: str, *, daemon: str, log_tail: str) -> None:
        super().__init__(message)
        self.daemon = daemon
        self.log_tail = log_tail


class ExecTimeout(SandboxError, TimeoutError):
    """``Sandbox.exec`` ran past its ``timeout``; the process was killed.

    ``stdout``/``stderr`` hold what it wrote before that (bytes).
    """

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class ExecError(SandboxError):
    """``ExecResult.check()`` on a command that did not exit 0; shows the output tail."""

    def __init__(self, argv: tuple[str, ...], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        parts = [f"command {' '.join(argv)!r} exited with {returncode}"]
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            if text.strip():
                parts.append(f"--- {name} (last lines) ---\n{tail(text)}")
        super().__init__("\n".join(parts))


def tail(text: str, lines: int = 20, chars: int = 4000) -> str:
    """The last ``lines`` lines of ``text`` (at most ``chars`` characters)."""
    out = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return out if len(out) <= chars else "..." + out[-chars:]
