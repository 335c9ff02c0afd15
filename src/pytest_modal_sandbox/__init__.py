"""pytest-modal-sandbox: ephemeral sandboxes for tests, on Modal or on this machine."""

from .errors import (
    BackendUnavailable,
    DaemonExitedError,
    ExecError,
    ExecTimeout,
    NotDeclaredError,
    ReadinessTimeout,
    SandboxError,
    SandboxGone,
    SandboxStartError,
    SpecError,
)
from .fixtures import sandbox_fixture
from .launch import start
from .sandbox import ExecResult, Sandbox
from .spec import Daemon, Probe, SandboxSpec

__all__ = [
    "BackendUnavailable",
    "Daemon",
    "DaemonExitedError",
    "ExecError",
    "ExecResult",
    "ExecTimeout",
    "NotDeclaredError",
    "Probe",
    "ReadinessTimeout",
    "Sandbox",
    "SandboxError",
    "SandboxGone",
    "SandboxSpec",
    "SandboxStartError",
    "SpecError",
    "sandbox_fixture",
    "start",
]
