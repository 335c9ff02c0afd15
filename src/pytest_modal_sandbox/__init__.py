"""pytest-modal-sandbox: ephemeral sandboxes for tests, on Modal or on this machine."""

from .errors import (
    BackendUnavailable,
    DaemonExitedError,
    ExecTimeout,
    NotDeclaredError,
    ReadinessTimeout,
    SandboxError,
    SandboxGone,
    SandboxStartError,
    SpecError,
)
from .spec import Daemon, Probe, SandboxSpec

__all__ = [
    "BackendUnavailable",
    "Daemon",
    "DaemonExitedError",
    "ExecTimeout",
    "NotDeclaredError",
    "Probe",
    "ReadinessTimeout",
    "SandboxError",
    "SandboxGone",
    "SandboxSpec",
    "SandboxStartError",
    "SpecError",
]
