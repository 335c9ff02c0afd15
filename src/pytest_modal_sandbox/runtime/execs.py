"""Running one command to completion: feed stdin, collect output, enforce a timeout.

It is spawned with the sandbox's walls (``spawner.spawn``).

The process (nsenter) leads its own process group, so a timeout kills the group, which
includes the child that nsenter forked inside the sandbox (see :func:`kill_exec` for why the
leader goes last).  Output is read until both pipes
close; but once the process has exited, a pipe that stays open and quiet for ``QUIET``
seconds is abandoned, so a background process that inherited stdout cannot hang the caller.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from .config import ExecOutcome
from .spawner import spawn

__all__ = ["QUIET", "kill_exec", "returncode_of", "run_to_completion"]

QUIET = 0.1


def returncode_of(raw: int) -> int:
    """Popen's code to the shell's convention: killed by signal N becomes 128+N."""
    return 128 - raw if raw < 0 else raw


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded), from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def _kill_if_in_group(pid: int, pgid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if os.getpgid(pid) == pgid:  # still the process we found (checked through the pidfd)
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def kill_exec(leader: int, *, grace: float = 2.0) -> None:
    """Kill an exec started with ``start_new_session=True`` (``exec_command``/``popen``): every
    process in its group, the nsenter leader last.

    Killing the whole group at once orphans nsenter's child inside the sandbox; orphans of a
    host process go to the host's init, and the sandbox's pid namespace cannot finish dying
    until that init reaps them (about a second here, forever under a PID 1 that never reaps).
    Killing the members first lets nsenter reap its child and exit by itself.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        members = [pid for pid in _group_members(leader) if pid != leader]
        if not members:
            break
        for pid in members:
            _kill_if_in_group(pid, leader)
        time.sleep(0.002)
    while time.monotonic() < deadline and leader in _group_members(leader):
        time.sleep(0.002)  # nsenter reaps its child, then kills itself with the same signal
    _kill_if_in_group(leader, leader)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None or _group_members(proc.pid):
        kill_exec(proc.pid)


def run_to_completion(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: bytes | None,
    timeout: float | None,
) -> ExecOutcome:
    proc = spawn(
        argv,
        env=dict(env),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        return _collect(proc, stdin, timeout)
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()


def _collect(
    proc: subprocess.Popen[bytes], data: bytes | None, timeout: float | None
) -> ExecOutcome:
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    view = memoryview(data or b"")
    offset = 0
    if proc.stdin is not None:
        stdin_fd = proc.stdin.fileno()
        if view:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    timed_out = False
    exited_at: float | None = None
    last_data = time.monotonic()
    try:
        while True:
            pipes_open = any(fd in sel.get_map() for fd in chunks)
            now = time.monotonic()
            if exited_at is not None and (
                not pipes_open or now - max(exited_at, last_data) >= QUIET
            ):
                break
            wait = None
            if exited_at is not None:
                wait = QUIET - (now - max(exited_at, last_data))
            elif deadline is not None:
                if now >= deadline:
                    timed_out = True
                    _kill_group(proc)
                    proc.wait()
                    exited_at = now
                    continue
                wait = deadline - now
            for key, _ in sel.select(wait):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    proc.wait()
                    exited_at = time.monotonic()
                elif fd in chunks:
                    block = os.read(fd, 65536)
                    if block:
                        chunks[fd].append(block)
                        last_data = time.monotonic()
                    else:
                        sel.unregister(fd)
                else:  # stdin
                    assert proc.stdin is not None
                    try:
                        offset += os.write(fd, view[offset : offset + 65536])
                    except (BrokenPipeError, ConnectionResetError):
                        offset = len(view)
                    if offset >= len(view):
                        sel.unregister(fd)
                        proc.stdin.close()
    finally:
        sel.close()
        os.close(pidfd)
    out = b"".join(chunks[proc.stdout.fileno()])
    err = b"".join(chunks[proc.stderr.fileno()])
    if timed_out:
        return ExecOutcome(-1, out, err, timed_out=True)
    return ExecOutcome(returncode_of(proc.returncode), out, err)
