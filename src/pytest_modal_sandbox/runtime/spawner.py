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
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from .. import errors
from . import linux, seccomp

__all__ = ["spawn"]

WORKERS = 4

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_failure: list[BaseException] = []


def _confine() -> None:
    """Run once on each spawner thread."""
    try:
        linux.no_new_privs()
        linux.join_anonymous_keyring()
        program = seccomp.program()
        if program is not None:
            linux.seccomp_filter(program)
    except BaseException as exc:  # the pool must not break: spawn() reports it instead
        _failure.append(exc)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                WORKERS, thread_name_prefix="pms-exec-spawner", initializer=_confine
            )
        return _pool


def _forget_after_fork() -> None:
    global _pool, _lock
    _pool = None  # its threads did not survive the fork
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _popen(argv: Sequence[str], kwargs: dict[str, Any]) -> subprocess.Popen[bytes]:
    if _failure:
        raise errors.SandboxError(
            f"cannot confine sandbox execs on this machine: {_failure[0]}"
        ) from _failure[0]
    return subprocess.Popen(list(argv), **kwargs)


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)``, started from a confined thread."""
    return _executor().submit(_popen, argv, kwargs).result()
