"""Readiness probes (``Sandbox.create(readiness_probe=...)``) checked from outside the sandbox.

A TCP probe passes once something LISTENs on the port inside the sandbox's network namespace:
the kernel's socket tables (``/proc/net/tcp`` and ``tcp6`` as seen from the sandbox) say so
without connecting, so the probe neither needs a tool in the image nor counts as a tunnel
connection.  An exec probe passes when its command exits 0.
"""

from __future__ import annotations

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def listening_ports(table: str) -> set[int]:
    """Ports in LISTEN state in the text of ``/proc/net/tcp`` and/or ``/proc/net/tcp6``."""
    ports: set[int] = set()
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN or ":" not in fields[1]:
            continue
        try:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports
