"""Readiness probes (``Sandbox.create(readiness_probe=...)``) checked from outside the sandbox.

A TCP probe passes once something LISTENs on the port inside the sandbox's network namespace:
the runtime reads the kernel's socket tables from the host (``LocalSandbox.listening_ports``),
so the probe needs no tool in the image (not even ``cat``) and is not a tunnel connection.  An
exec probe passes when its command exits 0.
"""

from __future__ import annotations

from ..runtime.ports import listening_ports

__all__ = ["listening_ports"]
