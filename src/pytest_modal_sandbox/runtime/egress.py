"""A sandbox's way out: slirp4netns, a user-mode network stack (stdlib only: the keeper loads
this file directly).

On Modal a sandbox reaches the network by default.  Locally each sandbox has a network
namespace of its own; for egress the keeper attaches a ``slirp4netns`` process to it, which
makes an ``eth0`` inside (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3 forwarded to the
host's resolver) and carries its connections out as ordinary sockets of the host.  No route,
bridge or firewall of the host is touched, and it needs no privilege.

* ``--disable-host-loopback``: 10.0.2.2 does not lead to the host's 127.0.0.1, so the host's
  loopback services (the emulator, a developer's databases) stay out of reach.  127.0.0.1 in
  the sandbox is its own loopback.
* ``cidr_allowlist``: the default route is replaced by one route per allowed IPv4 network
  (:func:`restrict_routes`); anything else is unreachable.  The sandbox cannot change its
  routes: its root holds no capability over the network namespace (``userns.py``).
* As root, slirp4netns runs ``--enable-sandbox`` (every capability dropped, a root of its own)
  and ``--enable-seccomp``; not as root it is already unprivileged (seccomp only).
* It lives exactly as long as the keeper: ``--exit-fd`` is a pipe whose other end only the
  keeper holds, so a SIGKILLed keeper ends it too.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["DEVICE", "DNS", "GATEWAY", "RESOLV_CONF", "restrict_routes", "slirp_argv"]

DEVICE = "eth0"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
RESOLV_CONF = f"nameserver {DNS}\n"
MTU = "65520"
READY_FD = 3
EXIT_FD = 4


def slirp_argv(slirp: str, netns_path: str, *, as_root: bool) -> list[str]:
    """The slirp4netns command line for the network namespace at ``netns_path`` (with
    ``READY_FD`` and ``EXIT_FD`` open in it).  ``--netns-type=path``: it joins only the
    network namespace, never the sandbox's user namespace, where root inside could reach it."""
    argv = [slirp, "--configure", f"--mtu={MTU}", "--disable-host-loopback"]
    argv += [f"--ready-fd={READY_FD}", f"--exit-fd={EXIT_FD}", "--netns-type=path"]
    if as_root:
        argv += ["--enable-sandbox"]
    argv += ["--enable-seccomp", netns_path, DEVICE]
    return argv


# rtnetlink, just what routes need (linux/netlink.h, linux/rtnetlink.h)
_NLMSG_ERROR = 2
_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RTN_UNICAST = 1
_RT_SCOPE_NOWHERE = 255
_RTA_DST = 1
_RTA_GATEWAY = 5


def _route_message(kind: int, flags: int, seq: int, dst: bytes, prefix: int) -> bytes:
    if kind == _RTM_DELROUTE:  # any IPv4 route to dst/prefix in the main table
        rtmsg = struct.pack(
            "BBBBBBBBI", socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, 0, _RT_SCOPE_NOWHERE, 0, 0
        )
        attrs = b""
    else:
        rtmsg = struct.pack(
            "BBBBBBBBI",
            *(socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC, 0, _RTN_UNICAST, 0),
        )
        attrs = struct.pack("HH", 8, _RTA_GATEWAY) + socket.inet_aton(GATEWAY)
    if prefix:
        attrs += struct.pack("HH", 8, _RTA_DST) + dst
    body = rtmsg + attrs
    header = struct.pack("IHHII", 16 + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
    return header + body


def _ask(sock: socket.socket, message: bytes, what: str) -> None:
    sock.send(message)
    reply = sock.recv(65536)
    length, kind = struct.unpack_from("IH", reply)
    if kind == _NLMSG_ERROR:
        (code,) = struct.unpack_from("i", reply, 16)
        if code:
            raise OSError(-code, f"{what}: {os.strerror(-code)}")


def restrict_routes(networks: list[tuple[str, int]]) -> None:
    """In the sandbox's network namespace (the caller has joined it): drop the default route
    and route only ``networks`` (IPv4 ``(address, prefix length)``) through the gateway.
    10.0.2.0/24 (the gateway, DNS) stays on-link."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        sock.bind((0, 0))
        _ask(sock, _route_message(_RTM_DELROUTE, 0, 1, b"", 0), "removing the default route")
        for seq, (address, prefix) in enumerate(networks, start=2):
            message = _route_message(
                _RTM_NEWROUTE,
                _NLM_F_CREATE | _NLM_F_EXCL,
                seq,
                socket.inet_aton(address),
                prefix,
            )
            try:
                _ask(sock, message, f"adding a route to {address}/{prefix}")
            except FileExistsError:
                pass  # two entries of the list cover the same network
    finally:
        sock.close()
