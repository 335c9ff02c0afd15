"""An offline emulator of Modal's sandbox control plane, for the real ``modal`` client.

Run it with ``python -m pytest_modal_sandbox.emulator`` (see :mod:`.cli` for the options and
what it prints), or from Python:

- :class:`EmulatorProcess` starts the CLI in a subprocess (``.start()``, ``.url``,
  ``.ca_file``, ``.client_env()``, ``.stats()``, ``.stop()``);
- :func:`serve` runs one in a background thread of this process (a context manager).

Names are resolved lazily so that importing this package does not import ``modal``/grpclib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Emulator", "EmulatorOptions", "EmulatorProcess", "RunningEmulator", "main", "serve"]

if TYPE_CHECKING:
    from .cli import main
    from .process import EmulatorProcess
    from .server import Emulator, EmulatorOptions, RunningEmulator, serve

_WHERE = {
    "Emulator": "server",
    "EmulatorOptions": "server",
    "RunningEmulator": "server",
    "serve": "server",
    "EmulatorProcess": "process",
    "main": "cli",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
