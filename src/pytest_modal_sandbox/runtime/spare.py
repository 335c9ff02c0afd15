"""The walls a keeper can make before it knows its sandbox (stdlib only: the keeper loads this
file directly).

Much of a sandbox's start does not depend on its spec: as root, the keeper's own mount
namespace, the two user namespaces bwrap starts in (``userns.py``) and, with egress, the
sandbox's network namespace with slirp4netns attached and ``eth0`` up (``egress.py``).  The
keeper server keeps a *spare* keeper that has made these for each of the last profiles asked
for (``keeper.py``'s ``serve``), so the next start of a profile pays only for what is its
own: the root, bwrap, the routes.  Each spare is made for one sandbox and used once; nothing
in it is shared.  A keeper handed a launch of another profile undoes what it made and makes
its own, as a keeper without a spare does.
"""

from __future__ import annotations

import hashlib
import os

try:
    from . import egress, linux, userns
except ImportError:  # loaded by the keeper as plain modules
    import egress  # type: ignore[import-not-found,no-redef]
    import linux  # type: ignore[import-not-found,no-redef]
    import userns  # type: ignore[import-not-found,no-redef]

TYPE_CHECKING = False  # not `typing`: importing it costs the keeper milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NETWORK_TIMEOUT", "Prepared", "profile_of"]

NETWORK_TIMEOUT = 10.0


def profile_of(launch: dict[str, Any]) -> str:
    """What can be made ahead for the sandbox of ``launch``: "" (nothing: not as root),
    "pair" (the keeper's mount namespace and the bwrap launcher in U1/U2), or "pair net
    <slirp4netns>" (with egress: also the network namespace, slirp4netns attached); as root
    followed by the host's mount table as the creator saw it (:func:`host_mounts`)."""
    walls = launch["walls"]
    if walls["userns"] != "pair":
        return ""
    net = launch.get("net")
    kind = f"pair net {net['slirp']}" if net and net.get("early") else "pair"
    return f"{kind} mounts {walls['host_mounts']}"


def host_mounts() -> str:
    """A digest of this process's mount table.  A spare's mount namespace is a copy of the
    host's made when the spare was, and the host's root is usually not a shared mount, so
    nothing mounted later would reach it: a spare serves only creators that see the same
    table."""
    with open("/proc/self/mountinfo", "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class Prepared:
    """The walls made for ``profile`` (:func:`profile_of`) in this process; :meth:`make` makes
    them (as a spare ahead, or as the keeper at its start), :meth:`undo` returns the process
    to the host's namespaces and ends what it started."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.host_ns: list[tuple[int, int]] = []  # (fd, CLONE_NEW*) of the host's namespaces
        self.launcher: userns.Launcher | None = None
        self.slirp: egress.Slirp | None = None
        self.network_up = False  # tried (network_error says how it went)
        self.network_error: str | None = None

    def make(self, *, ahead: bool = False) -> None:
        """Make them; OSError (the caller undoes what was made) if one cannot be, or if made
        ``ahead`` (by a spare) and the host's mount table is no longer the profile's."""
        if not self.profile:
            return
        kind, _, mounts = self.profile.partition(" mounts ")
        if ahead and host_mounts() != mounts:
            raise OSError("the host's mounts changed since the sandbox was asked for")
        _, _, slirp = kind.partition(" net ")
        flags = linux.CLONE_NEWNS | (linux.CLONE_NEWNET if slirp else 0)
        for name, flag in (("mnt", linux.CLONE_NEWNS), ("net", linux.CLONE_NEWNET)):
            if flags & flag:
                fd = os.open(f"/proc/self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                self.host_ns.append((fd, flag))
        linux.join_anonymous_keyring()  # before the launcher: bwrap inherits it
        # As root the keeper makes the sandbox's network namespace itself (owned by the
        # host's user namespace: nothing inside holds a capability over it).
        linux.unshare(flags)
        linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE, None)
        if slirp:
            egress.make_device()
            host_net = self.host_ns[-1][0]
            path = f"/proc/{os.getpid()}/ns/net"
            self.slirp = egress.Slirp(slirp, path, as_root=True, host_netns=host_net)
        self.launcher = userns.Launcher()  # in the new namespaces: bwrap starts in them

    def complete(self) -> bool:
        """Whether everything of the profile was made (a failed :meth:`make` was undone)."""
        return not self.profile or self.launcher is not None

    def ready_fd(self) -> int:
        """The descriptor that turns readable when the network can be brought up (-1: no
        network to wait for)."""
        return self.slirp.ready_r if self.slirp is not None and not self.network_up else -1

    def bring_up_network(self) -> str | None:
        """Wait for slirp4netns and bring ``lo`` and ``eth0`` up (once); None, or why not."""
        if self.slirp is not None and not self.network_up:
            self.network_up = True
            self.network_error = self.slirp.wait_ready(NETWORK_TIMEOUT)
            if not self.network_error:
                try:
                    egress.bring_up(loopback=True)
                except OSError as exc:
                    self.network_error = f"cannot configure the sandbox's network: {exc}"
        return self.network_error

    def adopt(self) -> None:
        """The keeper keeps what was made: it needs no way back to the host's namespaces."""
        for fd, _ in self.host_ns:
            os.close(fd)
        self.host_ns = []

    def undo(self) -> None:
        """End the launcher and slirp4netns and return to the host's namespaces (the ones made
        go with their last user)."""
        if self.launcher is not None:
            self.launcher.discard()
            self.launcher = None
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp.reap()
            self.slirp = None
        for fd, flag in reversed(self.host_ns):
            linux.setns(fd, flag)
            os.close(fd)
        self.host_ns = []
