"""Errors of the local runtime, each a subclass of the plugin-wide error it refines."""

from __future__ import annotations

from .. import errors

__all__ = [
    "InvalidArgument",
    "InvalidConfig",
    "NameTaken",
    "RuntimeUnavailable",
    "SandboxNotFound",
]


class RuntimeUnavailable(errors.BackendUnavailable):
    """bubblewrap, nsenter or user namespaces are missing here; the message says the fix."""


class SandboxNotFound(errors.SandboxGone):
    """Unknown sandbox id or name, or the sandbox has finished when a running one was needed."""


class NameTaken(errors.SandboxError):
    """A running sandbox of the same app already has that name (names are unique per app)."""


class InvalidConfig(errors.SpecError):
    """A ``SandboxConfig`` field is invalid; the message names the field and the value."""


class InvalidArgument(errors.SandboxError, ValueError):
    """An argument to a runtime call (exec argv, env, workdir, timeout...) is invalid."""
