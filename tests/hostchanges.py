"""A lock between tests that change what a host-image sandbox's view hides and tests that need
it to stay put (one copy for all test directories; ``tests/conftest.py`` puts this directory
on ``sys.path``).

A test that creates credential files on this host for a moment (``/home/...``, ``/etc/ssh``)
changes every host-image sandbox's plan meanwhile, and so its shape: a sandbox started ahead
(``runtime/warm.py``) then rightly serves no one.  Such a test holds the lock exclusively; a
test that counts on a sandbox started ahead holds it shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

LOCK = "/tmp/pytest-modal-sandbox-tests-host-changes.lock"


@contextlib.contextmanager
def host_changes(*, exclusive: bool) -> Iterator[None]:
    fd = os.open(LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
