"""A private writable ``/`` over a shared, read-only image root (``SandboxConfig.rootfs``).

Preferred: overlayfs (the image root as the lower layer, upper and work dirs on a tmpfs at the
sandbox's ``ovl/`` state dir), mounted by the keeper in a
private mount namespace of its own (``hostview.build``), so the mount is invisible to the host,
locked in the sandbox, and vanishes with the keeper.  As another user than root the keeper is
in a user namespace of its own (Linux >= 5.11 allows overlayfs there), which only helps when
the image root belongs to that user - files of unmapped owners could not be written inside.
Where overlayfs is refused or unsuitable (an odd path, a root owned by someone else) the root
is copied with ``cp -a --reflink=auto`` instead - instant on btrfs/xfs, a real copy elsewhere.
The image root itself is never written to in either case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from .. import errors
from .store import SandboxPaths

__all__ = ["MODE_ENV", "overlay_usable", "prepare", "remember_overlay_failure"]

MODE_ENV = "PYTEST_MODAL_SANDBOX_ROOTFS"  # "overlay" or "copy": force one way (tests)
RESOLV_CONF = "nameserver 127.0.0.1\n"  # no network inside: fail fast rather than time out
HOST_RESOLV_CONF = "/etc/resolv.conf"  # builds share the host's network, and its resolver

_lock = threading.Lock()
_overlay_failure: str | None = None


def overlay_usable(rootfs: str) -> bool:
    """Whether to try overlayfs for ``rootfs`` (not forced off, not already seen to fail, and
    as non-root only for a root that belongs to us)."""
    mode = os.environ.get(MODE_ENV)
    if mode == "copy":
        return False
    with _lock:
        if _overlay_failure is not None:
            return False
    if os.geteuid() == 0 or mode == "overlay":
        return True
    try:
        return os.stat(rootfs).st_uid == os.geteuid()
    except OSError:
        return False


def remember_overlay_failure(reason: str) -> None:
    """Stop trying overlayfs in this process (the keeper could not mount it)."""
    global _overlay_failure
    with _lock:
        _overlay_failure = reason


def prepare(
    rootfs: str, paths: SandboxPaths, *, overlay: bool, snapshot: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The keeper's overlay plan of the sandbox's future ``/`` (at ``ovl/root``, see
    ``hostview.py``), or None when the root was copied (into ``paths.rootfs``).
    ``snapshot``: captured layers (newest first) stacked over the image root; they need
    overlayfs."""
    if not os.path.isdir(rootfs):
        raise errors.SandboxStartError(f"rootfs {rootfs!r} is not a directory")
    if overlay and not any(c in rootfs for c in ",:\\"):  # overlay option syntax
        paths.ovl.mkdir()
        return {
            "kind": "overlay",
            "root": overlay_root(paths),
            "ovl": str(paths.ovl),
            "xattr": "trusted" if os.geteuid() == 0 else "user",
            "layers": [
                {
                    "lower": [*snapshot, rootfs] if snapshot else rootfs,
                    "target": "/",
                    "mode": "overlay",
                    "entries": [],
                }
            ],
            # refused: the creator copies the root instead (a snapshot cannot be copied in)
            "copy_fallback": not snapshot,
        }
    if snapshot:
        raise errors.SandboxStartError(
            "a sandbox from a snapshot needs overlayfs over its image root, which is not "
            f"usable here ({os.environ.get(MODE_ENV) or _overlay_failure or 'refused'})"
        )
    paths.rootfs.mkdir()
    copy_tree(rootfs, paths.rootfs)
    return None


def overlay_root(paths: SandboxPaths) -> str:
    """Where the keeper mounts an overlaid root: inside the tmpfs of its upper layers, so that
    the whole view is one mount point of the state dir, detached in one go at the end."""
    return str(paths.ovl / "root")


def copy_tree(source: str, target: Path, *, what: str = "") -> None:
    """``cp -a --reflink=auto source/. target`` (keeps modes, links, times, xattrs, device
    nodes; owners as root).  ``what`` names the copy in the error."""
    cp = shutil.which("cp") or "/bin/cp"
    done = subprocess.run(
        [cp, "-a", "--reflink=auto", "--", f"{source.rstrip('/')}/.", str(target)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        what = what or f"the image root {source!r} for a sandbox"
        raise errors.SandboxStartError(f"cannot copy {what}: " + " | ".join(detail))
