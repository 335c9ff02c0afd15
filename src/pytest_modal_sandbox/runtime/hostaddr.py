"""Where sandboxes reach each other: this machine's own non-loopback address.

A sandbox's 127.0.0.1 is its own, and the host's loopback is out of its reach (``egress.py``),
so a sandbox connects to another one's declared port through a tunnel listener bound on the
host's first non-loopback IPv4 address, the *peer host*: its egress leaves through slirp4netns
as a connection of this machine to its own address.  Every tunnel listens on 127.0.0.1 and on
the peer host with the same port number (:func:`bind_pair`); the peer-host socket accepts
connections from this machine only (:func:`from_this_machine`), so nothing on the network the
machine sits in can reach a sandbox through it.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import threading

from .. import errors

__all__ = ["bind_pair", "from_this_machine", "peer_host"]

SIOCGIFFLAGS = 0x8913
SIOCGIFADDR = 0x8915
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
_lock = threading.Lock()
_found: list[str] = []


def _addresses() -> list[str]:
    """IPv4 addresses of the interfaces that are up and not loopback, in interface order."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("16s24x", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(probe, SIOCGIFFLAGS, request), 16)[0]
                if not flags & IFF_UP or flags & IFF_LOOPBACK:
                    continue
                answer = fcntl.ioctl(probe, SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on it
                continue
            out.append(socket.inet_ntoa(answer[20:24]))
    return out


def peer_host() -> str:
    """This machine's first non-loopback IPv4 address (found once per process)."""
    with _lock:
        if not _found:
            found = [a for a in _addresses() if not a.startswith("127.")]
            if not found:
                raise errors.SandboxError(
                    "this machine has no non-loopback IPv4 address, so local sandboxes cannot "
                    "reach each other (peer()): bring up a network interface (any address "
                    "works, nothing is sent off the machine)"
                )
            _found.append(found[0])
        return _found[0]


def bind_pair(attempts: int = 20) -> tuple[socket.socket, socket.socket | None]:
    """Two listening TCP sockets with the same port: on 127.0.0.1 and on the peer host (None
    when the machine has none)."""
    try:
        host: str | None = peer_host()
    except errors.SandboxError:
        host = None
    for _ in range(attempts):
        loopback = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        loopback.bind(("127.0.0.1", 0))
        if host is None:
            loopback.listen(128)
            return loopback, None
        peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            peer.bind((host, loopback.getsockname()[1]))
        except OSError as exc:
            loopback.close()
            peer.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        loopback.listen(128)
        peer.listen(128)
        return loopback, peer
    raise OSError(errno.EADDRINUSE, f"no port free on both 127.0.0.1 and {host}")


def from_this_machine(conn: socket.socket) -> bool:
    """Whether an accepted connection comes from this machine (a local connection to one of
    its addresses has that address as its source)."""
    try:
        return bool(conn.getpeername()[0] == conn.getsockname()[0])
    except OSError:
        return False
