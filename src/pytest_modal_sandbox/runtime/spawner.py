"""Starting an exec with the walls of the sandbox's PID 1: no_new_privs, the seccomp filter, a
session keyring of its own.

bwrap gives the sandbox's own process tree those three; an exec (``nsenter`` into the
sandbox's namespaces, see ``LocalSandbox.exec_command``) must end up with no more.  All three
are attributes of a thread that its children inherit and keep across ``execve``, so execs are
spawned from a few dedicated threads that set them on themselves once.  Those threads keep
their capabilities - ``nsenter`` needs them to join the namespaces, and ``setns`` stays
allowed by the filter - while nothing they start can gain privileges through a setuid binary
or file capabilities, make the calls the filter denies, or read the creator's kernel keys.
Capabilities and the uid mapping need no help: joining the sandbox's user namespace (U2 as
root) gives an exec exactly what PID 1's tree has there.

The threads are daemon threads fed through lock-free queues, not a ``ThreadPoolExecutor``:
a Ctrl-C landing while a caller holds one of the executor's locks would leave it held, and the
executor's exit hook would then wait for it forever.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from .. import errors
from . import linux, seccomp

__all__ = ["spawn"]

WORKERS = 4

_Reply = queue.SimpleQueue[tuple[subprocess.Popen[bytes] | None, BaseException | None]]
_requests: queue.SimpleQueue[tuple[Sequence[str], dict[str, Any], _Reply]] = queue.SimpleQueue()
_started: list[threading.Thread] = []
_start_lock = threading.Lock()


def _confine() -> BaseException | None:
    try:
        linux.no_new_privs()
        linux.join_anonymous_keyring()
        program = seccomp.program()
        if program is not None:
            linux.seccomp_filter(program)
    except BaseException as exc:
        return exc
    return None


def _serve() -> None:
    failure = _confine()
    while True:
        argv, kwargs, reply = _requests.get()
        if failure is not None:
            error = errors.SandboxError(f"cannot confine sandbox execs on this machine: {failure}")
            reply.put((None, error))
            continue
        try:
            reply.put((subprocess.Popen(list(argv), **kwargs), None))
        except BaseException as exc:
            reply.put((None, exc))


def _ensure_workers() -> None:
    if len(_started) >= WORKERS:
        return
    with _start_lock:
        while len(_started) < WORKERS:
            thread = threading.Thread(target=_serve, name="pms-exec-spawner", daemon=True)
            thread.start()
            _started.append(thread)


def _forget_after_fork() -> None:
    global _requests, _start_lock
    _started.clear()  # their threads did not survive the fork
    _requests = queue.SimpleQueue()
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)``, started from a confined thread."""
    _ensure_workers()
    reply: _Reply = queue.SimpleQueue()
    _requests.put((argv, kwargs, reply))
    proc, error = reply.get()
    if error is not None:
        raise error
    assert proc is not None
    return proc
