"""A warm interpreter that forks the fault suite's inner runs, instead of starting each afresh.

An inner run of the fault suite must be a process of its own — it is signalled, SIGKILLed,
crashed — but a fresh ``python -m pytest`` spends about a second of CPU importing pytest, the
plugin and, on the Modal path, ``modal`` before it does anything.  :class:`Zygote` is one
interpreter (per process using it) that has imported all that and nothing else: no thread, no
client, no sandbox.  :meth:`Zygote.spawn` has it fork a child that becomes the run — its own
session, working directory, environment and stdio — and runs the module as ``python -m``
does, through to a normal interpreter exit (``atexit``, thread joins).  What the child cannot
have afresh is what a module did when it was imported: here that is the module's own
defaults, which a run's environment (read when used: ``MODAL_*``, ``PYTEST_MODAL_SANDBOX_*``)
does not change.  xdist workers an inner run starts are still fresh interpreters.

The zygote is our child; the runs are its children.  It reports each run's pid when it forked
it and its exit status (as ``Popen.returncode``: ``-N`` for signal N) when it ended, on a
socket only that run's :class:`ForkedProcess` holds.  It ends when the process that started it
closes its end of the control socket (or dies); runs already started go on.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# Imported before the first fork: what an inner run (controller, or the CLI) imports anyway.
PRELOAD = (
    "xdist.dsession",
    "modal",
    "pytest_modal_sandbox.session",
    "pytest_modal_sandbox.backends.local",
    "pytest_modal_sandbox.backends.modal",
    "pytest_modal_sandbox.emulator.process",
    "pytest_modal_sandbox.lifecycle.runs",  # what the CLI (its __main__, run by runpy) imports
)

# The zygote: its command line names no module (the tests look for processes by theirs), so
# what to import comes as the first message.  It imports them inside a pytest run that
# collects nothing, as a run's own plugins are imported: pytest rewrites the asserts of its
# plugins' packages (ours, xdist) as it imports them, and a run whose plugin modules were
# imported otherwise warns that it cannot.
_SERVER = r"""
import array, importlib, json, os, runpy, select, socket, sys, tempfile

import pytest

control = socket.socket(fileno=int(sys.argv[1]))
names = json.loads(control.recv(1 << 16))


class Preload:
    def pytest_configure(self, config):
        for name in names:
            importlib.import_module(name)


os.environ.pop("PYTEST_ADDOPTS", None)
empty = tempfile.mkdtemp()
args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:anyio", "--rootdir", empty]
pytest.main([*args, empty], plugins=[Preload()])
os.rmdir(empty)


def serve():
    # pidfd -> (pid, status socket) of each run still going
    running = {}
    while True:
        ready = select.select([control, *running], [], [])[0]
        for fd in ready:
            if fd is control:
                continue
            pid, status = running.pop(fd)
            os.close(fd)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            try:
                status.send(str(code).encode())
            except OSError:
                pass
            status.close()
        if control not in ready:
            continue
        fds = array.array("i")
        msg, anc, _, _ = control.recvmsg(1 << 20, socket.CMSG_LEN(4 * fds.itemsize))
        if not msg:
            return None  # the process that started us is gone: so are we
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        stdio, status = list(fds[:3]), socket.socket(fileno=fds[3])
        sys.stdout.flush()
        sys.stderr.flush()
        settled_r, settled_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for other in running.values():
                other[1].close()
            for fd in running:
                os.close(fd)
            control.close()
            status.close()
            os.close(settled_r)
            os.setsid()  # before anyone learns the pid: its process group is the run's
            os.close(settled_w)
            return json.loads(msg), stdio
        os.close(settled_w)
        os.read(settled_r, 1)  # EOF once the child has its own session
        os.close(settled_r)
        for fd in stdio:
            os.close(fd)
        try:
            status.send(str(pid).encode())
        except OSError:
            pass
        running[os.pidfd_open(pid)] = (pid, status)


child = serve()
if child is not None:  # a forked run: become it
    request, stdio = child
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)
    sys.argv = [request["module"], *request["args"]]
    sys.path[0] = request["cwd"]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
"""


class ForkedProcess:
    """A run the zygote forked: as much of ``subprocess.Popen`` as the fault suite uses."""

    def __init__(self, argv: list[str], status: socket.socket) -> None:
        self.args = argv
        self._status = status
        self.returncode: int | None = None
        self.pid = int(self._read(None))

    def _read(self, timeout: float | None) -> str:
        if not select.select([self._status], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        data = self._status.recv(64)
        if not data:
            raise RuntimeError(f"the zygote ended without telling how {self.args} ended")
        return data.decode()

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._read(timeout))
            self._status.close()
        return self.returncode

    def __del__(self) -> None:
        self._status.close()


class Zygote:
    """The warm interpreter (started on first use) and how to have it fork a run."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self._preload = list(preload)
        self._control: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _SERVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a signal to our process group is not for it
        )
        theirs.close()
        ours.send(json.dumps(self._preload).encode())
        self._control = ours
        return ours

    def spawn(
        self,
        module: str,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str],
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> ForkedProcess:
        """``python -m MODULE ARGS`` as a fork of the zygote, in a session of its own."""
        control = self._control or self._start()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        request: dict[str, Any] = {
            "module": module,
            "args": list(args),
            "cwd": os.fspath(cwd),
            "env": dict(env),
        }
        fds = array.array("i", [stdin, stdout, stderr, theirs.fileno()])
        try:
            control.sendmsg(
                [json.dumps(request).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
        finally:
            theirs.close()
        return ForkedProcess([sys.executable, "-m", module, *args], ours)

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            self._proc.wait(30)
            self._proc = None
