"""A sandbox's ``mounts`` (``SandboxConfig.mounts``): private, writable views of the user's
files and directories, prepared at create.

A directory is, by preference, an overlayfs the keeper mounts in its own mount namespace
(:func:`~.hostview.build_mount_overlays`): the source as the read-only lower layer, the
upper layer on a tmpfs of the sandbox's, so a tree of any size costs one mount, and writes
inside land in memory and vanish with the sandbox.  Where overlayfs is not used (the caller's
``overlay=False``, e.g. after the kernel refused it, or a path overlayfs options cannot
spell), and for a single file, the source is copied into the sandbox's state dir with one
``cp -a --reflink=auto`` per mount (instant on btrfs/xfs; never a per-file step in Python).
Either way bwrap binds the result at the path in the sandbox, and the user's files are never
written.  Overlays show the source as it is (a change made on the host during the test shows
through); copies as it was at start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import errors

__all__ = ["prepare_mounts"]

_OPTION_SYNTAX = ",:\\"  # what overlayfs's mount options cannot take unescaped in a lowerdir


def prepare_mounts(
    mounts: Mapping[str, str], into: Path, *, overlay: bool
) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
    """``(binds, plan)``: the ``(host path, sandbox path)`` pairs for bwrap, parents before
    children, and the keeper's overlay plan (None when nothing is overlaid)."""
    if not mounts:
        return [], None
    into.mkdir(mode=0o755)
    binds = []
    layers: list[dict[str, str]] = []
    for index, target in enumerate(sorted(mounts, key=lambda t: t.count("/"))):
        source = mounts[target]
        at = into / str(index)
        if overlay and os.path.isdir(source) and not any(c in source for c in _OPTION_SYNTAX):
            at.mkdir()
            layers.append({"lower": source, "at": str(at)})
        else:
            _copy(source, at, target)
        binds.append((str(at), target))
    plan = None
    if layers:
        plan = {
            "ovl": str(into / "ovl"),
            "xattr": "trusted" if os.geteuid() == 0 else "user",
            "layers": layers,
        }
    return binds, plan


def _copy(source: str, at: Path, target: str) -> None:
    cp = shutil.which("cp") or "/bin/cp"
    if os.path.isdir(source):
        at.mkdir()
        argv = [cp, "-a", "--reflink=auto", "--", f"{source.rstrip('/')}/.", str(at)]
    else:
        argv = [cp, "-a", "--reflink=auto", "--", source, str(at)]
    done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise errors.SandboxStartError(
            f"cannot copy {source!r} for the mount at {target}: " + " | ".join(detail)
        )
