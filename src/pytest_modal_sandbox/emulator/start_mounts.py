"""Mounts attached at sandbox start (``Image.add_local_dir``/``add_local_file`` without
``copy=True``, ``add_local_python_source``): the sandbox create's ``mount_ids``.

The client uploads the files before the create (``mounts.py``); here each mount's files are
written once to a directory of their own (``<state>/mounts/<fingerprint>/``, by the digest
of the mount's file table: the client makes a new mount id each time it loads an image, so a
later sandbox with the same files reuses the directory), and each mount becomes one entry of the
runtime's ``SandboxConfig.mounts``: the deepest directory holding all its files (a file, for
a mount of one file), which the runtime copies for the sandbox: writes inside reach neither
this directory nor other sandboxes, as on Modal.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from .mounts import MountStore
from .rpc_error import RpcError

__all__ = ["StartMounts"]


class StartMounts:
    """Mount ids to ``{path in the sandbox: directory or file here}`` for the runtime."""

    def __init__(self, store: MountStore, root: Path) -> None:
        self.store = store
        self.root = root
        self._lock = threading.Lock()

    def config(self, mount_ids: Sequence[str]) -> dict[str, str]:
        """Blocking (writes files the first time a mount is used)."""
        out: dict[str, str] = {}
        for mount_id in mount_ids:
            target, path = self._written(mount_id)
            if target is None:
                continue  # a mount without files (an empty directory) adds nothing
            if target in out:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"two mounts of the sandbox put their files at {target}: mount the "
                    "directories at different paths",
                )
            out[target] = path
        return out

    def _written(self, mount_id: str) -> tuple[str | None, str]:
        files = self.store.files(mount_id)  # NOT_FOUND for an unknown id
        if not files:
            return None, ""
        paths = ["/" + p.lstrip("/") for p in files]
        common = posixpath.commonpath(paths) if len(paths) > 1 else paths[0]
        if common == "/":
            raise RpcError(
                "INVALID_ARGUMENT",
                f"mount {mount_id} puts files directly under /: the emulator attaches a mount "
                "as one directory; mount them under a directory",
            )
        key = self.store.fingerprint(mount_id)
        base = self.root / key
        with self._lock:
            if not base.exists():
                partial = self.root / f".{key}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                made: set[Path] = set()
                for rel, content in files.items():
                    dest = partial / rel.lstrip("/")
                    if dest.parent not in made:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        made.add(dest.parent)
                    dest.write_bytes(content.data)
                    os.chmod(dest, content.mode & 0o7777)
                partial.rename(base)
        return common, str(base) + common
