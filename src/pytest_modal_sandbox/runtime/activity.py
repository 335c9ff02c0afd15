"""Cross-process activity for ``idle_timeout``.

Modal counts a sandbox as active while an exec runs, while stdin is being written and while a
tunnel connection is open; processes running inside do not count.  Any process can hold a
token: a file in the sandbox's ``activity/`` dir with an exclusive flock on it.  The keeper
tests each file with a non-blocking shared lock: a lock it cannot get means "active", and a
file it can lock belonged to a holder that died.  Releasing a token (and :func:`touch`) bumps
the mtime of ``last_activity``, from which the idle clock restarts.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ActivityToken", "hold", "touch"]


def touch(last_activity: Path) -> None:
    """Record a moment of activity (ignored once the sandbox's record is gone)."""
    try:
        os.utime(last_activity)
    except FileNotFoundError:
        pass


class ActivityToken:
    """One held unit of activity; ``release()`` is idempotent."""

    def __init__(self, activity_dir: Path, last_activity: Path) -> None:
        self._last_activity = last_activity
        self._path: Path | None = None
        self._fd = -1
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        tmp = activity_dir / f".tmp-{name}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            return  # the sandbox's record is gone: nothing to keep alive
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Publish only once locked, so the keeper never sees an unlocked live token.
            os.rename(tmp, activity_dir / name)
        except OSError:
            os.close(fd)
            return
        self._fd = fd
        self._path = activity_dir / name
        touch(last_activity)

    def release(self) -> None:
        if self._path is None:
            return
        touch(self._last_activity)  # before unlocking: the keeper must never see a gap
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._path = None
        self._fd = -1


@contextmanager
def hold(activity_dir: Path, last_activity: Path) -> Iterator[None]:
    token = ActivityToken(activity_dir, last_activity)
    try:
        yield
    finally:
        token.release()
