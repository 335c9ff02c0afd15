"""Bind a volume's working copy into a running sandbox at its mount path.

The sandbox's mount namespace is only reachable from a single-threaded process that joins it,
and a bind mount cannot cross namespaces with the classic ``mount(2)``.  The new mount API
can: here, in the emulator, ``open_tree(OPEN_TREE_CLONE)`` makes a detached copy of the
working copy's mount (made read-only with ``mount_setattr`` for a read-only mount); the helper
``mount_volume.py``, run inside the sandbox's mount namespace with the runtime's
``helper_command``, attaches it with ``move_mount``.  The runtime itself needs no option for it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

from ..runtime import LocalSandbox
from .rpc_error import RpcError
from .volumes import WorkingCopy

MOUNT_SCRIPT = Path(__file__).with_name("mount_volume.py")
SYS_OPEN_TREE = 428  # the same on every architecture (new syscalls share numbers)
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOUNT_ATTR_RDONLY = 0x00000001
_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def attach(local: LocalSandbox, wc: WorkingCopy) -> None:
    """Mount ``wc`` in ``local`` at ``wc.mount_path`` (blocking; FAILED_PRECONDITION if not)."""
    tree = _clone_tree(wc.path, read_only=wc.read_only)
    try:
        argv, fds = local.helper_command(MOUNT_SCRIPT, [str(tree), wc.mount_path])
        try:
            proc = subprocess.run(
                argv,
                pass_fds=(tree, *fds.values()),
                capture_output=True,
                text=True,
                timeout=60,
                start_new_session=True,
                check=False,
            )
        finally:
            for fd in fds.values():
                os.close(fd)
    finally:
        os.close(tree)
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
        hint = ""
        if "Read-only file system" in why:
            hint = (
                " (this sandbox's root is read-only: the host's root without a private "
                "writable view; mount under /tmp, /run or /var/tmp, or use an image)"
            )
        raise RpcError(
            "FAILED_PRECONDITION", f"cannot mount the volume at {wc.mount_path}: {why}{hint}"
        )


def _clone_tree(path: Path, *, read_only: bool) -> int:
    fd = int(
        _libc.syscall(
            SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise RpcError("INTERNAL", f"open_tree({path}): {os.strerror(err)}")
    if read_only:
        attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
        if _libc.syscall(
            SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
        ):
            err = ctypes.get_errno()
            os.close(fd)
            raise RpcError("INTERNAL", f"mount_setattr(read-only): {os.strerror(err)}")
    return fd
