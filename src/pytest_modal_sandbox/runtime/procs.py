"""Process identity that survives pid reuse: a pid plus its start time from /proc.

Any process may signal a keeper recorded in the state dir, long after the fact; a bare pid
could by then name an unrelated process.  Every signal goes through a pidfd opened and then
checked against the recorded start time, so the check and the signal name the same process.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import time

__all__ = ["ProcRef", "is_alive", "open_pidfd", "proc_ref", "send_signal", "wait_gone"]


@dataclasses.dataclass(frozen=True)
class ProcRef:
    """A process as recorded: ``pid`` and ``start`` (ticks after boot, field 22 of its stat)."""

    pid: int
    start: int

    @classmethod
    def from_json(cls, data: object) -> ProcRef:
        if not (isinstance(data, list) and len(data) == 2 and all(type(x) is int for x in data)):
            raise ValueError(f"not a process reference: {data!r}")
        return cls(data[0], data[1])


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def proc_ref(pid: int) -> ProcRef | None:
    """The current identity of ``pid`` (None when it does not exist)."""
    st = _stat(pid)
    return None if st is None else ProcRef(pid, st[2])


def is_alive(ref: ProcRef) -> bool:
    """Whether the recorded process still runs (a zombie counts as gone)."""
    st = _stat(ref.pid)
    return st is not None and st[2] == ref.start and st[0] not in ("Z", "X")


def open_pidfd(ref: ProcRef) -> int | None:
    """A pidfd for the recorded process, or None when it is gone (or pidfds are unsupported)."""
    try:
        fd = os.pidfd_open(ref.pid)
    except (ProcessLookupError, AttributeError, OSError):
        return None
    st = _stat(ref.pid)
    if st is None or st[2] != ref.start:
        os.close(fd)
        return None
    return fd


def send_signal(ref: ProcRef, sig: int) -> bool:
    """Signal the recorded process if it is still that process; True when the signal was sent."""
    fd = open_pidfd(ref)
    if fd is None:
        if not hasattr(os, "pidfd_open") and is_alive(ref):  # no pidfds: check, then kill
            try:
                os.kill(ref.pid, sig)
                return True
            except ProcessLookupError:
                return False
        return False
    try:
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def wait_gone(ref: ProcRef, timeout: float | None) -> bool:
    """Wait until the recorded process has exited; True if it has (zombies count as exited)."""
    fd = open_pidfd(ref)
    if fd is None:
        if not hasattr(os, "pidfd_open"):
            deadline = None if timeout is None else time.monotonic() + timeout
            while is_alive(ref):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
    finally:
        os.close(fd)
