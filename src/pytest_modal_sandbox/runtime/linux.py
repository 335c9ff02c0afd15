"""The few Linux system calls Python 3.11's ``os`` lacks: unshare, setns, mount, prctl, keyctl.

Stdlib only and cheap to import (``_ctypes`` directly: the ``ctypes`` package costs the keeper
several milliseconds of start-up), because the keeper loads this file as a plain module, not
through the package.  Every call raises :class:`OSError` naming what failed.
"""

from __future__ import annotations

import _ctypes
import errno
import os
import sys

TYPE_CHECKING = False  # not `typing`: importing it costs the keeper milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "clone_into_user_namespace",
    "high_fd",
    "join_anonymous_keyring",
    "make_readonly",
    "mount",
    "no_new_privs",
    "seccomp_filter",
    "setns",
    "umount",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219}  # keyctl(2) has no libc wrapper
CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}
SIGCHLD = 17
MOUNT_SETATTR_SYSCALL = 442  # the same number on every architecture
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


# The few ctypes types we need, made from _ctypes directly (typed loosely: Any).
_Long: Any = type("_Long", (_ctypes._SimpleCData,), {"_type_": "l"})
_Char: Any = type("_Char", (_ctypes._SimpleCData,), {"_type_": "c"})
_dlopen: Any = _ctypes.dlopen  # its stub does not admit None (the program itself)
_LIBC: Any = type("_Libc", (), {"_handle": _dlopen(None, os.RTLD_NOW)})
_Function: Any = type(
    "_Function",
    (_ctypes.CFuncPtr,),
    {"_flags_": _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO, "_restype_": _Long},
)

_functions: dict[str, Any] = {}


def _call(name: str, what: str, *args: object) -> int:
    function = _functions.get(name)
    if function is None:
        function = _functions[name] = _Function((name, _LIBC))
    result = function(*(_Long(a) if isinstance(a, int) else a for a in args))
    if result == -1:
        err = _ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(result)


def clone_into_user_namespace() -> int:
    """``fork()`` straight into a new user namespace (raw ``clone(CLONE_NEWUSER|SIGCHLD)``):
    returns the child's pid, and 0 in the child.  No fork handlers run, so the caller must be
    single-threaded and the child must do little more than read and ``os._exit``."""
    number = CLONE_SYSCALL.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"no clone() number known for {os.uname().machine}")
    return _call("syscall", "clone(CLONE_NEWUSER)", number, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)


def high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered >= 10: above every number a child is
    given (0-6), so a ``dup2`` onto one of them never lands on another of its sources."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


def unshare(flags: int) -> None:
    _call("unshare", f"unshare({flags:#x})", flags)


def setns(fd: int, nstype: int) -> None:
    _call("setns", f"setns({nstype:#x})", fd, nstype)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _call(
        "mount",
        f"mount {source} on {target}" + (f" ({fstype})" if fstype else ""),
        source.encode(),
        target.encode(),
        None if fstype is None else fstype.encode(),
        flags,
        None if data is None else data.encode(),
    )


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _call("umount2", f"umount {target}", target.encode(), flags)


def make_readonly(target: str) -> None:
    """Make the mount at ``target`` and every mount below it read-only (Linux >= 5.12)."""
    attr = MOUNT_ATTR_RDONLY.to_bytes(8, sys.byteorder) + bytes(24)  # struct mount_attr
    _call(
        "syscall",
        f"making {target} read-only (mount_setattr)",
        MOUNT_SETATTR_SYSCALL,
        AT_FDCWD,
        target.encode(),
        AT_RECURSIVE,
        attr,
        len(attr),
    )


def no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS`` for the calling thread: exec never grants privileges again."""
    _call("prctl", "prctl(PR_SET_NO_NEW_PRIVS)", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def join_anonymous_keyring() -> bool:
    """Give the calling thread a new, empty session keyring (kernel keyrings are not fully
    namespaced: a sandbox must not inherit its creator's).  False where unsupported."""
    number = KEYCTL_SYSCALL.get(os.uname().machine)
    if number is None:
        return False
    try:
        _call("syscall", "keyctl(JOIN_SESSION_KEYRING)", number, KEYCTL_JOIN_SESSION_KEYRING, None)
    except OSError:
        return False  # keyrings compiled out (ENOSYS) or refused: nothing to inherit then
    return True


def seccomp_filter(program: bytes) -> None:
    """Install a classic-BPF seccomp ``program`` on the calling thread (needs no_new_privs or
    CAP_SYS_ADMIN); it is inherited by every child and kept across execve."""
    if len(program) % 8 or not program or sys.maxsize < 2**32:
        raise ValueError("a seccomp program is a non-empty array of 8-byte instructions (64-bit)")

    array: Any = type("_Program", (_ctypes.Array,), {"_type_": _Char, "_length_": len(program)})
    buffer = array.from_buffer_copy(program)
    address = _ctypes.addressof(buffer)
    fprog = (len(program) // 8).to_bytes(2, sys.byteorder) + bytes(6)
    fprog += address.to_bytes(8, sys.byteorder)
    _call("prctl", "prctl(PR_SET_SECCOMP)", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog, 0, 0)
    del buffer
