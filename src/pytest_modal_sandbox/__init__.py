"""pytest-modal-sandbox: ephemeral sandboxes for tests, on Modal or on this machine.

The names below are imported on first use, so that ``import pytest_modal_sandbox.runtime`` (or
any other part of the pytest-free core) neither needs pytest nor pays for what it does not use,
and an inactive plugin stays cheap at pytest start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .authproxy import ConnectToken
    from .errors import (
        BackendUnavailable,
        DaemonExitedError,
        ExecError,
        ExecTimeout,
        NotDeclaredError,
        QuotaExceeded,
        ReadinessTimeout,
        RetriesExhausted,
        SandboxError,
        SandboxGone,
        SandboxStartError,
        SpecError,
    )
    from .fixtures import sandbox_fixture
    from .launch import start
    from .sandbox import ExecResult, Sandbox
    from .snapshot import Snapshot
    from .spec import Daemon, Probe, SandboxSpec

_WHERE = {
    "ConnectToken": "authproxy",
    "BackendUnavailable": "errors",
    "DaemonExitedError": "errors",
    "ExecError": "errors",
    "ExecTimeout": "errors",
    "NotDeclaredError": "errors",
    "QuotaExceeded": "errors",
    "ReadinessTimeout": "errors",
    "RetriesExhausted": "errors",
    "SandboxError": "errors",
    "SandboxGone": "errors",
    "SandboxStartError": "errors",
    "SpecError": "errors",
    "sandbox_fixture": "fixtures",
    "start": "launch",
    "ExecResult": "sandbox",
    "Sandbox": "sandbox",
    "Snapshot": "snapshot",
    "Daemon": "spec",
    "Probe": "spec",
    "SandboxSpec": "spec",
}

__all__ = [
    "BackendUnavailable",
    "ConnectToken",
    "Daemon",
    "DaemonExitedError",
    "ExecError",
    "ExecResult",
    "ExecTimeout",
    "NotDeclaredError",
    "Probe",
    "QuotaExceeded",
    "ReadinessTimeout",
    "RetriesExhausted",
    "Sandbox",
    "SandboxError",
    "SandboxGone",
    "SandboxSpec",
    "SandboxStartError",
    "Snapshot",
    "SpecError",
    "sandbox_fixture",
    "start",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
