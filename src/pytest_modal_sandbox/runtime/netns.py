"""Making sockets inside a sandbox's network namespace, from the calling process.

A socket belongs to the network namespace of the thread that created it, and keeps it: once
made, it can be connected from any thread.  Two ways to make one:

* ``SetnsConnector`` (root): a dedicated thread ``setns``es into the sandbox's network
  namespace once and then makes sockets on request.  Only that thread moves; it stays in the
  host's user namespace (host code never joins the sandbox's, where the sandbox's root could
  reach it).
* ``RelayConnector`` (anyone): a helper process started with ``nsenter`` inside the namespace
  (not as root: through the sandbox's user namespace, the only way in) makes the sockets and
  passes them back over a unix socket (SCM_RIGHTS).
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import linux, procs

__all__ = ["Connector", "RelayConnector", "SetnsConnector", "make_connector"]

RELAY = str(Path(__file__).with_name("relay.py"))
MODE_ENV = "PYTEST_MODAL_SANDBOX_NETNS"  # "setns" or "relay": force one way (tests)


class Connector:
    """Makes unconnected stream sockets in one sandbox's network namespace."""

    def new_socket(self, family: int) -> concurrent.futures.Future[socket.socket]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SetnsConnector(Connector):
    """A thread living in the sandbox's network namespace (needs CAP_SYS_ADMIN over it)."""

    def __init__(self, init: procs.ProcRef) -> None:
        self._requests: queue.Queue[tuple[int, concurrent.futures.Future[socket.socket]] | None]
        self._requests = queue.Queue()
        ns_fd = os.open(f"/proc/{init.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if not procs.is_alive(init):  # the pid was reused: that is some other namespace
            os.close(ns_fd)
            raise ProcessLookupError(f"sandbox PID 1 ({init.pid}) is gone")
        entered: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ns_fd, entered), name="pms-netns", daemon=True
        )
        self._thread.start()
        entered.result()

    def _serve(self, ns_fd: int, entered: concurrent.futures.Future[None]) -> None:
        try:
            linux.setns(ns_fd, linux.CLONE_NEWNET)
        except OSError as exc:
            entered.set_exception(exc)
            return
        finally:
            os.close(ns_fd)
        entered.set_result(None)
        while True:
            item = self._requests.get()
            if item is None:
                return
            family, future = item
            try:
                future.set_result(socket.socket(family, socket.SOCK_STREAM))
            except OSError as exc:
                future.set_exception(exc)

    def new_socket(self, family: int) -> concurrent.futures.Future[socket.socket]:
        future: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
        self._requests.put((family, future))
        return future

    def close(self) -> None:
        self._requests.put(None)


class RelayConnector(Connector):
    """A helper process inside the namespace passes sockets back (works without root)."""

    def __init__(self, nsenter: str, init: procs.ProcRef, label: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        flags = [] if os.geteuid() == 0 else ["-U", "--preserve-credentials"]
        if not procs.is_alive(init):
            raise ProcessLookupError(f"sandbox PID 1 ({init.pid}) is gone")
        try:
            self._proc = subprocess.Popen(
                [
                    *(nsenter, "-t", str(init.pid), *flags, "-n", "--"),
                    *(sys.executable or "python3", "-I", "-S", RELAY, str(theirs.fileno()), label),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self._control = ours
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pms-relay")

    def _request(self, family: int) -> socket.socket:
        with self._lock:
            self._control.sendall(str(int(family)).encode())
            msg, fds, _, _ = socket.recv_fds(self._control, 256, 1)
            if not fds:
                raise OSError(f"the socket relay failed: {msg.decode(errors='replace') or 'gone'}")
            return socket.socket(fileno=fds[0])

    def new_socket(self, family: int) -> concurrent.futures.Future[socket.socket]:
        return self._pool.submit(self._request, family)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control.close()  # the relay reads EOF and exits
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def make_connector(init: procs.ProcRef, *, nsenter: str, label: str) -> Connector:
    mode = os.environ.get(MODE_ENV)
    if mode != "relay" and (mode == "setns" or os.geteuid() == 0):
        return SetnsConnector(init)
    return RelayConnector(nsenter, init, label)
