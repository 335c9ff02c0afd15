"""Private copies of a sandbox's ``mounts`` (``SandboxConfig.mounts``), made at create.

One ``cp -a --reflink=auto`` per mount (instant on btrfs/xfs, a plain copy elsewhere; never a
per-file step in Python), into the sandbox's state dir, which bwrap then binds at the path in
the sandbox.  A copy, not a bind of the source: writes inside never reach the user's files,
and the sandbox sees the files as they were at start, as on Modal (which uploads them then).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .. import errors

__all__ = ["copy_mounts"]


def copy_mounts(mounts: Mapping[str, str], into: Path) -> list[tuple[str, str]]:
    """Copy each source of ``mounts`` (sandbox path -> host path) under ``into``; returns the
    ``(copy, sandbox path)`` pairs to bind, parents before children."""
    if not mounts:
        return []
    into.mkdir(mode=0o755)
    cp = shutil.which("cp") or "/bin/cp"
    binds = []
    for index, target in enumerate(sorted(mounts, key=lambda t: t.count("/"))):
        source = mounts[target]
        copy = into / str(index)
        if os.path.isdir(source):
            copy.mkdir()
            argv = [cp, "-a", "--reflink=auto", "--", f"{source.rstrip('/')}/.", str(copy)]
        else:
            argv = [cp, "-a", "--reflink=auto", "--", source, str(copy)]
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise errors.SandboxStartError(
                f"cannot copy {source!r} for the mount at {target}: " + " | ".join(detail)
            )
        binds.append((str(copy), target))
    return binds
