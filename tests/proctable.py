"""Reading the process table, for the tests' "nothing left running" checks (one copy for all
test directories; ``tests/conftest.py`` puts this directory on ``sys.path``)."""

from __future__ import annotations

import os


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live (not zombie) processes, other than this one, whose command line contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = _stat_fields(name)
        if text in cmdline and fields is not None and fields[0] != b"Z":
            found.append((int(name), cmdline))
    return found


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        fields = _stat_fields(name) if name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(name))
    return found


def children_of(pid: int) -> list[int]:
    """Live (not zombie) children of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        fields = _stat_fields(name) if name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(name))
    return found
