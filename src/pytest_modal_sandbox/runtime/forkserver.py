"""Starting keepers: one keeper server per creating process forks a keeper per sandbox.

Starting a Python interpreter for each sandbox's keeper cost most of a sandbox's start (and
its own few MiB of memory); the server (``keeper.py``'s :func:`serve`) is started once, with
the keeper code loaded, and forks the keepers, which share its pages copy-on-write.  It keeps
one keeper forked ahead (a spare) that has already made the walls a sandbox like the last one
needs and do not depend on its spec (``spare.py``), so a create pays only for the rest.  Each
keeper is still a process of its own, bwrap's parent, tied to its owner as before
(``keeper.py``), so a sandbox ends exactly as it did; the server only starts them.  It exits
(and its spare with it) when this process's end of its socket closes.

:class:`KeeperProc` stands for a keeper that is not our child (the server is its parent, and
the kernel reaps it): its pid and a pidfd.
"""

from __future__ import annotations

import atexit
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

from .. import errors

__all__ = ["KeeperProc", "release", "start_keeper"]

KEEPER = str(Path(__file__).with_name("keeper.py"))
CMDLINE_ROOM = 1024  # keeper.CMDLINE_ROOM: room in the server's argv for each keeper's title


class KeeperProc:
    """A keeper forked by the server: ``poll()`` and ``wait()`` as on a ``Popen`` (the exit
    code is the server's to know: 0 once it has exited).  Safe from several threads: the pidfd
    stays open until the object goes (closing it in ``wait`` let a second waiter close it
    again - EBADF, or someone else's descriptor with the same number)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exited = False
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already exited and reaped
            self._pidfd = None

    def poll(self) -> int | None:
        return None if self.wait(0) is None else 0

    def wait(self, timeout: float | None = None) -> int | None:
        """0 once the keeper has exited; None if it still runs after ``timeout`` seconds."""
        fd = self._pidfd
        if self._exited or fd is None:
            return 0
        if not select.select([fd], [], [], timeout)[0]:
            return None
        self._exited = True
        return 0

    def __del__(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable or "python3", "-I", "-S", KEEPER),
                    *("--serve", str(theirs.fileno()), " " * CMDLINE_ROOM),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C for pytest's process group is not for it
                cwd="/",
            )
        finally:
            theirs.close()
        self.sock = ours

    def fork(self, launch: Path, fds: dict[str, int], log_fd: int, profile: str) -> KeeperProc:
        names = ",".join(fds)
        message = f"{launch}\0{names}\0{profile}".encode()
        socket.send_fds(self.sock, [message], [log_fd, *fds.values()])
        reply = self.sock.recv(64)
        if not reply:
            raise OSError("the keeper server exited")
        if reply == b"0":
            raise OSError("the keeper server could not fork a keeper")
        return KeeperProc(int(reply))

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_lock = threading.Lock()
_server: list[_Server] = []


def start_keeper(launch: Path, fds: dict[str, int], log_fd: int, profile: str) -> KeeperProc:
    """Have this process's keeper server start the keeper of ``launch`` (whose
    ``spare.profile_of`` is ``profile``) with the creator's pipe ends ``fds`` (``{"ready_fd":
    fd, ...}``) and ``log_fd`` as its stderr.  A server that has died is replaced once."""
    with _lock:
        for attempt in range(2):
            if not _server or _server[0].proc.poll() is not None:
                if _server:
                    _server.pop().close()
                _server.append(_Server())
            try:
                return _server[0].fork(launch, fds, log_fd, profile)
            except OSError as exc:
                _server.pop().close()
                if attempt:
                    raise errors.SandboxStartError(
                        f"the keeper server could not start a keeper: {exc}"
                    ) from exc
    raise AssertionError("unreachable")


def release(state: Path) -> None:
    """Have this process's keeper server end the sandboxes it started ahead in ``state``
    (``warm.py``), and wait until they have: nothing of them is left once this returns."""
    with _lock:
        if not _server or _server[0].proc.poll() is not None:
            return
        try:
            _server[0].sock.send(b"\0release\0" + os.fsencode(state))
            _server[0].sock.recv(64)
        except OSError:
            pass


def _close_at_exit() -> None:
    """End the server as this process exits (its spares and the sandboxes they started ahead
    end with it; keepers do not), rather than leave its socket and process to the garbage
    collector at shutdown, which warns of both."""
    with _lock:
        while _server:
            _server.pop().close()


def _forget_after_fork() -> None:
    """A forked child must not share the parent's server (nor wait for it)."""
    global _lock
    _lock = threading.Lock()
    for server in _server:
        server.sock.close()
    _server.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_close_at_exit)
