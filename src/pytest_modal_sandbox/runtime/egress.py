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
* ``cidr_allowlist``: instead of a default route, one route per allowed IPv4 network
  (:func:`route`); anything else is unreachable.  The sandbox cannot change its
  routes: its root holds no capability over the network namespace (``userns.py``).
* As root, slirp4netns runs ``--enable-sandbox`` (every capability dropped, a root of its own)
  and ``--enable-seccomp``; not as root it is already unprivileged (seccomp only).
* It lives exactly as long as the keeper: ``--exit-fd`` is a pipe whose other end only the
  keeper holds, so a SIGKILLed keeper ends it too.
* ``eth0`` is a persistent tap device made before slirp4netns attaches to it
  (:func:`make_device`), so that slirp4netns's exit does not wait for the device to go.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct

_signal = __import__("_signal")  # not `signal`: its enums cost the keeper milliseconds

try:
    from . import linux
except ImportError:  # loaded by the keeper as a plain module, beside linux.py
    import linux  # type: ignore[import-not-found,no-redef]

__all__ = [
    "DEVICE",
    "DNS",
    "GATEWAY",
    "RESOLV_CONF",
    "Slirp",
    "bring_up",
    "make_device",
    "route",
    "slirp_argv",
]

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
    argv = [slirp, f"--mtu={MTU}", "--disable-host-loopback"]
    argv += [f"--ready-fd={READY_FD}", f"--exit-fd={EXIT_FD}", "--netns-type=path"]
    if as_root:
        argv += ["--enable-sandbox"]
    argv += ["--enable-seccomp", netns_path, DEVICE]
    return argv


class Slirp:
    """A running slirp4netns (a child of the caller) for the network namespace at
    ``netns_path``; it joins the network namespace ``host_netns`` first when the caller has
    already left the host's.  What it says goes to a memory file, quoted when it fails."""

    def __init__(self, slirp: str, netns_path: str, *, as_root: bool, host_netns: int = -1):
        self.ready_r, ready_w = os.pipe()
        exit_r, self.exit_w = os.pipe()
        self.log = os.memfd_create("slirp4netns", os.MFD_CLOEXEC)
        argv = slirp_argv(slirp, netns_path, as_root=as_root)
        # dup2 onto 2-4 must always copy: move the child's ends clear of those numbers
        moved = [linux.high_fd(fd) for fd in (ready_w, exit_r)]
        os.close(ready_w)
        os.close(exit_r)
        ready_w, exit_r = moved
        pid = os.fork()
        if pid == 0:  # a single-threaded parent: only plain system calls until the exec
            try:
                if host_netns >= 0:
                    linux.setns(host_netns, linux.CLONE_NEWNET)
                os.dup2(ready_w, READY_FD)
                os.dup2(exit_r, EXIT_FD)
                os.dup2(self.log, 2)
                for sig in (_signal.SIGPIPE, _signal.SIGINT, _signal.SIGHUP, _signal.SIGTERM):
                    _signal.signal(sig, _signal.SIG_DFL)
                os.execve(argv[0], argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            except BaseException as exc:
                os.write(2, f"keeper: cannot run {argv[0]}: {exc}\n".encode())
            os._exit(127)
        self.pid = pid
        os.close(ready_w)
        os.close(exit_r)

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until it has attached to the network namespace; None, or why it did not."""
        if self.ready_r < 0:
            return None
        try:
            ready = select.select([self.ready_r], [], [], timeout)[0]
            answer = os.read(self.ready_r, 1) if ready else b""
        finally:
            os.close(self.ready_r)
            self.ready_r = -1
        if answer == b"1":
            return None
        why = "exited" if ready else f"did not report within {timeout:.0f} s"
        said = os.pread(self.log, 4096, 0)[-600:].decode("utf-8", "replace").strip()
        return f"slirp4netns {why} before attaching the sandbox's network" + (
            f"; it said: {' | '.join(said.splitlines())}" if said else ""
        )

    def stop(self) -> None:
        """Kill and reap it (closing its exit pipe alone would end it too, later)."""
        if self.pid:
            os.close(self.exit_w)
            try:
                os.kill(self.pid, _signal.SIGKILL)  # our unreaped child: the pid is stable
            except OSError:
                pass

    def reap(self) -> None:
        if self.pid:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
            for fd in (self.ready_r, self.log):
                if fd >= 0:
                    os.close(fd)
            self.ready_r = self.log = -1


_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000


def make_device() -> None:
    """Create ``eth0`` in the current network namespace as a persistent tap device, for
    slirp4netns to attach to.  A device that goes when its last file closes is unregistered
    in that close, which waits for RCU grace periods (~10-20 ms) in slirp4netns's exit and so
    in every terminate; a persistent one goes with its network namespace, which the kernel
    cleans up in the background."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", DEVICE.encode(), _IFF_TAP | _IFF_NO_PI))
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    finally:
        os.close(fd)


# rtnetlink, just what configuring eth0 needs (linux/netlink.h, rtnetlink.h, if_addr.h)
_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_IFF_UP = 0x1
_IFLA_MTU = 4
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4
_RTN_UNICAST = 1
_RTA_DST = 1
_RTA_GATEWAY = 5
ADDRESS = "10.0.2.100"
PREFIX = 24


def _attr(kind: int, data: bytes) -> bytes:
    return struct.pack("HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _ask(sock: socket.socket, kind: int, flags: int, body: bytes, what: str) -> None:
    header = struct.pack("IHHII", 16 + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, 1, 0)
    sock.send(header + body)
    reply = sock.recv(65536)
    if struct.unpack_from("H", reply, 4)[0] == _NLMSG_ERROR:
        (code,) = struct.unpack_from("i", reply, 16)
        if code:
            raise OSError(-code, f"{what}: {os.strerror(-code)}")


def _netlink() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    sock.bind((0, 0))
    return sock


def bring_up(*, loopback: bool) -> None:
    """In the sandbox's network namespace (the caller has joined it): bring ``eth0`` (made by
    :func:`make_device`, attached to by slirp4netns) up as 10.0.2.100/24; 10.0.2.0/24
    (gateway, DNS) is then on-link.  With ``loopback``, ``lo`` is brought up too (the kernel
    gives it 127.0.0.1 and ::1): bwrap does that only in a network namespace it makes itself.
    Done here rather than by ``slirp4netns --configure``, which also sets up ``lo`` and then
    races bwrap doing the same."""
    index = socket.if_nametoindex(DEVICE)
    sock = _netlink()
    try:
        if loopback:
            lo = struct.pack("BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex("lo"), 1, 1)
            _ask(sock, _RTM_NEWLINK, 0, lo, "bringing lo up")
        link = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, _IFF_UP, _IFF_UP)
        link += _attr(_IFLA_MTU, struct.pack("I", int(MTU)))
        _ask(sock, _RTM_NEWLINK, 0, link, f"bringing {DEVICE} up")
        address = socket.inet_aton(ADDRESS)
        addr = struct.pack("BBBBI", socket.AF_INET, PREFIX, 0, 0, index)
        addr += _attr(_IFA_LOCAL, address) + _attr(_IFA_ADDRESS, address)
        _ask(sock, _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, addr, f"addressing {DEVICE}")
    finally:
        sock.close()


def route(networks: list[tuple[str, int]] | None) -> None:
    """In the sandbox's network namespace, with ``eth0`` up: route ``networks`` (IPv4
    ``(address, prefix length)``; None: everything) through the gateway."""
    sock = _netlink()
    try:
        for address_text, prefix in [("0.0.0.0", 0)] if networks is None else networks:
            route = struct.pack(
                "BBBBBBBBI",
                *(socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_STATIC, 0, _RTN_UNICAST, 0),
            )
            route += _attr(_RTA_GATEWAY, socket.inet_aton(GATEWAY))
            if prefix:
                route += _attr(_RTA_DST, socket.inet_aton(address_text))
            try:
                _ask(
                    sock,
                    _RTM_NEWROUTE,
                    _NLM_F_CREATE | _NLM_F_EXCL,
                    route,
                    f"routing {address_text}/{prefix}",
                )
            except FileExistsError:
                pass  # two entries of the allowlist name the same network
    finally:
        sock.close()
