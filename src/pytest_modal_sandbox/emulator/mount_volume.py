"""Attach a volume's working copy inside a running sandbox (run by ``LocalSandbox.helper_command``).

``python enter.py mnt=FD -- mount_volume.py TREE_FD MOUNT_PATH``: the emulator has cloned the
working copy's directory as a detached mount tree (``open_tree(OPEN_TREE_CLONE)``, read-only
if the mount is) and passes its fd; this helper, now in the sandbox's mount namespace, creates
the mount point and attaches the tree there (``move_mount``).  Stdlib only, imports at module
level (see ``runtime/enter.py``).  Exit 0, or 1 with the reason on stderr.
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_MOVE_MOUNT = 429  # the same on every architecture (new syscalls share numbers)
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def main(args: list[str]) -> int:
    tree, target = int(args[0]), args[1]
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as exc:
        print(f"cannot create the mount point {target}: {exc.strerror}", file=sys.stderr)
        return 1
    if _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH):
        err = ctypes.get_errno()
        print(f"cannot mount at {target}: {os.strerror(err)}", file=sys.stderr)
        return 1
    return 0
