"""Uploaded file sets (``modal.Mount``): what image builds ``COPY`` from.

The client uploads a build context - ``Image.dockerfile_commands(["COPY ..."])``, and
``add_local_file``/``add_local_dir``/``add_local_python_source`` with ``copy=True`` - as a
mount: ``MountBatchedCheckExistence`` (which contents are missing), ``MountPutFile`` (inline
data, by SHA-256), ``MountGetOrCreate`` (the file list).  Contents are kept in memory, once
per digest.  Files of 4 MiB and more go through Modal's blob store (``blobs.py``): uploaded
over HTTP, then named here by blob id.  ``Volume.batch_upload`` uploads the same way.

Mounts attached to a sandbox at start (``copy=False``) are written out and copied into the
sandbox by ``start_mounts.py``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import ids
from .blobs import BlobStore
from .rpc_error import RpcError

__all__ = ["ContextFile", "MountStore"]


@dataclass(frozen=True)
class ContextFile:
    """One file of a build context: its content and mode bits."""

    data: bytes
    mode: int = 0o644


class MountStore:
    """File contents by SHA-256 and mounts by id (one emulator's lifetime)."""

    def __init__(self, blob_store: BlobStore | None = None) -> None:
        self._blob_store = blob_store
        self._blobs: dict[str, bytes] = {}
        self._mounts: dict[str, dict[str, tuple[str, int]]] = {}
        self._named: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def missing(self, hashes: Iterable[str]) -> list[str]:
        with self._lock:
            return [h for h in dict.fromkeys(hashes) if h not in self._blobs]

    def put(self, sha256_hex: str, data: bytes | None, blob_id: str = "") -> bool:
        """Store ``data`` (or the uploaded blob ``blob_id``) under its digest; without either,
        whether it is stored already."""
        if blob_id:
            if self._blob_store is None:
                raise RpcError("UNIMPLEMENTED", "this mount store has no blob store")
            data = self._blob_store.read(blob_id)
        if not data:
            with self._lock:
                return sha256_hex in self._blobs or sha256_hex == hashlib.sha256(b"").hexdigest()
        if hashlib.sha256(data).hexdigest() != sha256_hex:
            raise RpcError("INVALID_ARGUMENT", f"the data does not match sha256 {sha256_hex}")
        with self._lock:
            self._blobs[sha256_hex] = bytes(data)
        return True

    def create(
        self, files: Iterable[tuple[str, str, int]], *, name: str = "", environment: str = ""
    ) -> str:
        """A mount of ``(filename, sha256_hex, mode)``; ``name`` looks a deployed one up."""
        if name and not list(files):
            with self._lock:
                found = self._named.get((environment, name))
            if found is None:
                raise RpcError(
                    "NOT_FOUND",
                    f"Mount {name!r} not found: the emulator has no Modal-provided mounts "
                    "(e.g. add_python's standalone Python)",
                )
            return found
        table: dict[str, tuple[str, int]] = {}
        empty = hashlib.sha256(b"").hexdigest()
        with self._lock:
            for filename, digest, mode in files:
                if digest not in self._blobs and digest != empty:
                    raise RpcError(
                        "FAILED_PRECONDITION", f"{filename}: content {digest} was not uploaded"
                    )
                table[filename.lstrip("/")] = (digest, mode)
            mount_id = ids.object_id("mo")
            self._mounts[mount_id] = table
            if name:
                self._named[(environment, name)] = mount_id
        return mount_id

    def content(self, sha256_hex: str) -> bytes:
        """An uploaded file's content by digest (FAILED_PRECONDITION if never uploaded)."""
        with self._lock:
            data = self._blobs.get(sha256_hex)
        if data is None:
            if sha256_hex == hashlib.sha256(b"").hexdigest():
                return b""
            raise RpcError("FAILED_PRECONDITION", f"content {sha256_hex} was not uploaded")
        return data

    def fingerprint(self, mount_id: str) -> str:
        """A digest of the mount's file table (paths, contents, modes): equal for every mount
        of the same files, whatever its id (each client load of a mount makes a new id)."""
        with self._lock:
            table = self._mounts.get(mount_id)
            if table is None:
                raise RpcError("NOT_FOUND", f"Mount {mount_id} not found")
            rows = sorted(table.items())
        return hashlib.sha256(repr(rows).encode()).hexdigest()[:32]

    def files(self, mount_id: str) -> Mapping[str, ContextFile]:
        """The mount's files by path (relative to the mount's root)."""
        with self._lock:
            table = self._mounts.get(mount_id)
            if table is None:
                raise RpcError("NOT_FOUND", f"Mount {mount_id} not found")
            return {
                path: ContextFile(self._blobs.get(digest, b""), mode or 0o644)
                for path, (digest, mode) in table.items()
            }
