"""Which TCP ports listen, from the kernel's socket tables (``/proc/net/tcp`` and ``tcp6``).

The tables say it without connecting, so a readiness check neither needs a tool in the image
nor counts as a tunnel connection.
"""

from __future__ import annotations

__all__ = ["listening_ports"]

_LISTEN = "0A"  # TCP_LISTEN in the "st" column


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
