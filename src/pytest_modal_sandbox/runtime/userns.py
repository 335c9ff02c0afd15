"""The user namespaces a sandbox lives in (stdlib only: the keeper loads this file directly).

A sandbox's capabilities must hold only inside a user namespace, and that namespace must own
none of the sandbox's other namespaces: with ``CAP_SYS_ADMIN`` over its own mount namespace a
process could unmount or remount what hides and protects the host.  So, as root:

* **U1** maps every uid and gid to itself (``0 0 4294967295``): uid 0 inside is uid 0 outside,
  images' own users (``postgres``, ``_apt``) keep their ids, files keep their owners.  bwrap
  runs in it (as root there) and creates the sandbox's mount, pid, network, ipc, uts and
  cgroup namespaces, so U1 owns them.
* **U2**, a child of U1 with the same mapping, is where every process of the sandbox runs
  (``--userns2``; ``nsenter -U`` joins PID 1's, i.e. U2).  Capabilities in U2 let root inside
  change owners, switch uids, override file modes and signal its own processes, but not touch
  any namespace U1 owns: no mount, no network or host-name change.
* U1's ``user.max_*_namespaces`` are set to exactly what bwrap creates, so no process of the
  sandbox can make a namespace of any kind (the kernel counts a namespace against every
  ancestor user namespace): not a nested user namespace in which it would own a mount
  namespace again, nor anything else.

Only root may map more than its own uid, and a process cannot write the map of a namespace it
sits in: the keeper forks the process that becomes bwrap (a :class:`Launcher`), which unshares
U1 (the keeper writes its map), and a short-lived helper of its own unshares U2 (it writes
that map); bwrap gets U2 as ``--userns2``.  None of it depends on the sandbox's spec, so a
spare keeper makes it before its sandbox is asked for (``spare.py``); U1's limits are set
just before the exec.

Not as root, the keeper itself enters a user namespace of its own, mapping its uid to 0
(:func:`enter_own`); bwrap nests the sandbox's user namespace in it.  Only that one uid exists
inside, so a daemon cannot switch to another user.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `typing`: importing it costs the keeper milliseconds
if TYPE_CHECKING:
    from typing import Any, NoReturn

try:
    from . import linux
except ImportError:  # loaded by the keeper as a plain module, beside linux.py
    import linux  # type: ignore[import-not-found,no-redef]

__all__ = ["FULL_MAP", "Launcher", "enter_own", "set_limits"]

FULL_MAP = "0 0 4294967295"
NAMESPACE_KINDS = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time")


def set_limits(limits: dict[str, int]) -> None:
    """Set this user namespace's ``max_<kind>_namespaces`` (missing kinds: left alone)."""
    for kind in NAMESPACE_KINDS:
        path = f"/proc/sys/user/max_{kind}_namespaces"
        if kind in limits and os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(limits[kind]))


def _write_maps(pid: int | str, uid_map: str, gid_map: str, *, deny: bool = False) -> None:
    if deny:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def _expect(fd: int, what: str) -> bytes:
    data = os.read(fd, 64)
    if not data:
        raise OSError(f"creating the sandbox's user namespaces failed ({what})")
    return data


def _child_namespace() -> int:
    """In U1: make U2 and return its fd.  A helper process is cloned straight into U2 (no
    round trip: its namespace exists when clone returns), we write U2's maps, open its
    namespace file, let it go and reap it."""
    hold_r, hold_w = os.pipe()
    try:
        b = linux.clone_into_user_namespace()
    except OSError:  # an architecture without a known clone(): fork, and wait for unshare
        ready_r, ready_w = os.pipe()
        b = os.fork()
        if b == 0:
            linux.unshare(linux.CLONE_NEWUSER)
            os.write(ready_w, b"u")
        else:
            os.close(ready_w)
            _expect(ready_r, "U2")
            os.close(ready_r)
    if b == 0:  # helper B: a raw clone of a single-threaded process; only close, read, _exit
        os.close(hold_w)
        os.read(hold_r, 1)  # EOF once the parent holds U2
        os._exit(0)
    os.close(hold_r)
    try:
        _write_maps(b, FULL_MAP, FULL_MAP)
        return os.open(f"/proc/{b}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)
        os.waitpid(b, 0)


class Launcher:
    """A process already in U1 (its map written, U2 made) that becomes bwrap when told to
    (:meth:`spawn`).  A spare keeper makes one before its sandbox is asked for, so that the
    two user namespaces cost the sandbox's start nothing (``keeper.py``); otherwise it is
    made just before bwrap runs.  Root only."""

    def __init__(self) -> None:
        """Fork it and wait until it is in U1 with U2 made; OSError saying why it cannot be."""
        import socket  # the keeper server has it loaded already

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        unshared_r, unshared_w = os.pipe()
        mapped_r, mapped_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ours.close()
            os.close(unshared_r)
            os.close(mapped_w)
            _launch(theirs, unshared_w, mapped_r)  # never returns
        theirs.close()
        os.close(unshared_w)
        os.close(mapped_r)
        self.pid = pid
        self._sock = ours
        try:
            said = os.read(unshared_r, 4096)
            if said == b"u":  # in U1: write its maps, then it makes U2
                _write_maps(pid, FULL_MAP, FULL_MAP)
                os.write(mapped_w, b"m")
                said = os.read(unshared_r, 4096)
        except OSError as exc:
            said = f"!{exc}".encode()
        finally:
            os.close(unshared_r)
            os.close(mapped_w)
        if said != b"r":  # what it could not do, or nothing if it died
            self.discard()
            raise OSError(said[1:].decode(errors="replace") or "the bwrap launcher exited")

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        fds: dict[int, int],
        *,
        limits: dict[str, int],
        userns2_fd: int,
        default_signals: list[int],
    ) -> int:
        """Have the launcher set U1's limits, move ``fds`` (``{number: fd}``) to their numbers
        and U2 to ``userns2_fd``, and exec ``argv`` (bwrap, given ``--userns2
        <userns2_fd>``); returns its pid.  bwrap, already in U1 and root there, creates the
        sandbox's namespaces in U1 and moves the sandbox into U2.  A failure before the exec
        is written to fd 2 as ``keeper: ...`` and the process exits 1; a launcher that died
        before it was told raises OSError."""
        import marshal
        import socket

        message = marshal.dumps((argv, env, limits, list(fds), userns2_fd, default_signals))
        try:
            socket.send_fds(self._sock, [message], list(fds.values()))
        finally:
            self._sock.close()
        return self.pid

    def discard(self) -> None:
        """End the launcher unused (it exits on EOF) and reap it."""
        self._sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _moved_high(fd: int) -> int:
    """``fd`` moved clear of every number bwrap is given (:func:`linux.high_fd`)."""
    high = linux.high_fd(fd)
    os.close(fd)
    return high


def _launch(sock: Any, unshared_w: int, mapped_r: int) -> NoReturn:
    """The launcher's life: enter U1, make U2, wait for bwrap's command line, exec it."""
    import marshal
    import socket

    _signal = __import__("_signal")  # not `signal`: its enums cost the keeper milliseconds
    try:
        try:
            linux.unshare(linux.CLONE_NEWUSER)
            os.write(unshared_w, b"u")
            _expect(mapped_r, "maps of U1")
            os.close(mapped_r)
            userns2 = _moved_high(_child_namespace())
        except BaseException as exc:  # the keeper raises it
            os.write(unshared_w, f"!{exc}".encode()[:4000])
            os._exit(1)
        os.write(unshared_w, b"r")
        os.close(unshared_w)
        message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 16, socket.MSG_CMSG_CLOEXEC)
        if not message:
            os._exit(0)  # discarded
        argv, env, limits, targets, userns2_fd, default_signals = marshal.loads(message)
        for sig in default_signals:
            _signal.signal(sig, _signal.SIG_DFL)
        for target, fd in zip(targets, [_moved_high(fd) for fd in fds], strict=True):
            os.dup2(fd, target)  # inheritable, unlike the original
        os.dup2(userns2, userns2_fd)
        set_limits(limits)
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"keeper: cannot make the sandbox's user namespaces: {exc}\n".encode())
    os._exit(1)


def enter_own(limits: dict[str, int], *, mount_namespace: bool = True) -> None:
    """Not root: move this process into a new user namespace (its uid and gid become 0) and,
    by default, a new mount namespace owned by it; then set that namespace's limits."""
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER | (linux.CLONE_NEWNS if mount_namespace else 0))
    _write_maps("self", f"0 {uid} 1", f"0 {gid} 1", deny=True)
    set_limits(limits)
