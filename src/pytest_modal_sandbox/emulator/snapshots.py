"""Filesystem snapshots (``Sandbox.snapshot_filesystem()``): Images made of a sandbox's files.

The client asks the task command router (``TaskSnapshotFilesystem``; with
``MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT=1`` the control plane's ``SandboxSnapshotFs``) and gets an
Image id back, usable with ``modal.Image.from_id`` (``ImageFromId``) and as any sandbox's image.
Here the snapshot is the runtime's (``runtime/snapshot.py``): the sandbox's copy-on-write layers
over its image's root, so the Image runs with that image's env and workdir and the captured
files on top.  ``ttl_seconds`` is kept: past it the Image is gone (NOT_FOUND), as on Modal, and
its files are removed once no sandbox runs on them.

Memory snapshots (``_experimental_snapshot``, ``SandboxSnapshot``) are refused with
FAILED_PRECONDITION: restoring running processes would need CRIU, which does not work on every
machine the emulator runs on (Debian's CRIU 3.17 fails ``criu check`` on a 6.x kernel).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from modal_proto import api_pb2

from ..runtime.snapshot import remove, store_dir, take
from . import ids
from .images import ImageService
from .rpc_error import RpcError
from .sandboxes import SandboxManager

__all__ = ["MEMORY_REFUSED", "Snapshots"]

NO_EXPIRY = -1  # the client's TTL_NO_EXPIRY_SENTINEL
MEMORY_REFUSED = (
    "memory snapshots are not implemented by the emulator: restoring running processes needs "
    "CRIU, which fails on this machine's kernel; use Sandbox.snapshot_filesystem()"
)


class Snapshots:
    """Takes filesystem snapshots and records them as Images of the :class:`ImageService`."""

    def __init__(self, sandboxes: SandboxManager, images: ImageService) -> None:
        self.sandboxes = sandboxes
        self.images = images
        self.store: Path = store_dir(sandboxes.runtime.root)
        self._layers: dict[str, tuple[tuple[str, str], ...]] = {}  # live Images' (by id)
        self._taking: set[str] = set()  # snapshots being copied now (their directories)

    async def of_task(self, task_id: str, ttl_seconds: int) -> str:
        return await self._take(self.sandboxes.running_task(task_id).id, ttl_seconds)

    async def of_sandbox(self, sandbox_id: str, ttl_seconds: int) -> str:
        return await self._take(sandbox_id, ttl_seconds)

    async def _take(self, sandbox_id: str, ttl_seconds: int) -> str:
        if ttl_seconds == 0 or ttl_seconds < NO_EXPIRY:
            raise RpcError("INVALID_ARGUMENT", f"ttl_seconds={ttl_seconds}: must be positive")
        await self.expire()
        sb = self.sandboxes.get(sandbox_id)
        if not sb.running:
            raise RpcError("FAILED_PRECONDITION", f"Sandbox {sb.id} has finished")
        local = await self.sandboxes.container(sb)
        base = await self.images.state_for(sb.image_id)
        image_id = ids.object_id("im")
        try:
            layers = await asyncio.to_thread(
                take,
                self.store,
                f"snap-{image_id}",
                local.snapshot,
                run="",
                kept=False,
                source=sb.id,
            )
        except Exception as exc:
            raise RpcError(
                "FAILED_PRECONDITION", f"cannot snapshot Sandbox {sb.id}: {exc}"
            ) from exc
        state = dataclasses.replace(
            base, key=f"snapshot:{image_id}", layers=layers, description=f"snapshot of {sb.id}"
        )
        expires = None if ttl_seconds == NO_EXPIRY else time.time() + ttl_seconds
        self.images.add_built(image_id, state, expires_at=expires)
        return image_id

    def from_id(self, image_id: str) -> api_pb2.ImageFromIdResponse:
        if not self.images.known(image_id):
            raise RpcError("NOT_FOUND", f"Image {image_id!r} not found")
        return api_pb2.ImageFromIdResponse(image_id=image_id)

    async def expire(self) -> list[str]:
        """Remove the files of expired snapshots that neither a sandbox runs on nor a live
        snapshot stacks on (a snapshot of a clone keeps the layers it was started from)."""
        for image_id in self.images.expired():
            self._layers.pop(image_id, None)
        keep = [d for layers in self._layers.values() for _, d in layers]
        keep += self._taking
        return await asyncio.to_thread(self._remove_unused, keep)

    def _remove_unused(self, keep: list[str]) -> list[str]:
        in_use = [d for sb in self.sandboxes.runtime.list() for _, d in sb.layers]
        return remove(self.store, in_use=[*in_use, *keep])

    def close(self) -> None:
        """The emulator stops: its Images go, and so do their files."""
        self._layers.clear()
        remove(self.store)
