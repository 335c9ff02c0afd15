"""Socket relay: makes TCP sockets inside a sandbox's network namespace for a non-root caller.

A thread of a non-root process cannot ``setns`` into a network namespace owned by another user
namespace.  This helper is started as ``nsenter -t <pid> [-U] -n -- python -I -S relay.py
<fd> <sandbox dir>`` with a unix socket on fd ``<fd>``: for each request (the address family
as text) it creates an unconnected socket - which belongs to the namespace it was created in -
and passes it back with SCM_RIGHTS.  It exits when the caller closes its end.  Stdlib only.
"""

from __future__ import annotations

import socket
import sys


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    while True:
        request = control.recv(16)
        if not request:
            return
        try:
            made = socket.socket(int(request), socket.SOCK_STREAM)
        except (ValueError, OSError) as exc:
            control.sendall(f"error {exc}".encode()[:200])
            continue
        try:
            socket.send_fds(control, [b"ok"], [made.fileno()])
        finally:
            made.close()


if __name__ == "__main__":
    main()
