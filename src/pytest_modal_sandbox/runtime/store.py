"""The state dir: one directory per sandbox, readable and writable by any local process.

Layout of ``<state>/<sandbox id>/``::

    launch.marshal   keeper input, written by the creator before the keeper starts
    meta.json        the record (id, app, name, created_at, pids, env, workdir, ports, the
                     tags given at creation...); written once the sandbox runs: a directory
                     without it is invisible
    tags.json        the tags once set_tags has replaced them (atomically)
    stdout, stderr   the entrypoint's output
    activity/        one flock'ed file per active exec / stdin writer / tunnel connection
    last_activity    its mtime is the last moment of activity (idle_timeout)
    detached         present once detach_owner() was called
    result.json      the exit status, written by the keeper when the sandbox ends
    work/            not as root, in host-image mode: the writable workdir
    hosts, resolv.conf  bound at /etc/hosts and /etc/resolv.conf (image roots, not as root)
    empty            an empty file, bound over hidden files (host-image mode, not as root)
    root/            the sandbox's / when it is a copy of an image root, or the host's
                     root read-only (not as root)
    ovl/             the keeper's tmpfs of an overlaid root: upper/<n> and work/<n> of each
                     layer, and root/, the sandbox's / (rootfs.overlay_root)

Every file is replaced atomically (write to a temporary name, then rename), so readers never
see half a record.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

__all__ = ["SandboxPaths", "read_json", "remove_tree", "write_json"]


class SandboxPaths:
    """Where each file of one sandbox lives."""

    def writable(self) -> list[Path]:
        """What the keeper removes when the sandbox ends."""
        return [self.workdir, self.ovl, self.rootfs, self.mounts]

    def __init__(self, root: Path, sandbox_id: str) -> None:
        self.dir = root / sandbox_id
        self.launch = self.dir / "launch.marshal"
        self.meta = self.dir / "meta.json"
        self.tags = self.dir / "tags.json"
        self.result = self.dir / "result.json"
        self.stdout = self.dir / "stdout"
        self.stderr = self.dir / "stderr"
        self.keeper_log = self.dir / "keeper.log"
        self.activity = self.dir / "activity"
        self.last_activity = self.dir / "last_activity"
        self.detached = self.dir / "detached"
        self.workdir = self.dir / "work"
        self.hosts = self.dir / "hosts"
        self.resolv = self.dir / "resolv.conf"
        self.empty = self.dir / "empty"
        self.rootfs = self.dir / "root"
        self.ovl = self.dir / "ovl"
        self.mounts = self.dir / "mounts"  # private copies of SandboxConfig.mounts


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when the file does not exist (or is not valid JSON)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def remove_tree(path: Path) -> None:
    """Remove ``path`` (file or tree), ignoring what is already gone.  Directories without
    permissions (overlayfs leaves a mode-000 ``work`` dir) are opened up first."""

    def retry(func: object, name: str, _exc: object) -> None:
        parent = os.path.dirname(name)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, stat.S_IRWXU)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=retry)
        else:
            shutil.rmtree(path, onerror=retry)
