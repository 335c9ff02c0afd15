"""Modal's blob store and block downloads: the HTTP side of the emulator.

Large payloads do not travel over gRPC.  The client asks ``BlobCreate`` for an upload URL and
PUTs the bytes there (S3-style: the answer's ``ETag`` is the body's MD5, which the client
checks), then names the blob by id (``MountPutFile(data_blob_id=...)`` for files of 4 MiB
and more: image build contexts, ``Volume.batch_upload``); ``BlobGet`` gives a download URL.
``Volume.read_file`` gets one URL per 8 MiB block of the file (``VolumeGetFile2``) and GETs
them.  :class:`BlobStore` serves all three on one HTTP port on 127.0.0.1 (aiohttp, which the
``modal`` client depends on anyway); blobs are files under the emulator's state dir.

The port is bound and listening from the start, but aiohttp (more than half of the emulator's
start-up) is imported and serves only once a URL has been handed out: most emulators never
move a blob.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

from . import ids
from .rpc_error import RpcError

BLOCK_SIZE = 8 * 1024 * 1024  # the client's modal._utils.blob_utils.BLOCK_SIZE
MAX_BLOCK_TOKENS = 65536


class BlobStore:
    """Blobs by id on disk, and short-lived block tokens, behind an HTTP server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asked = False  # a URL was handed out: serve
        self._serving: asyncio.Future[None] | None = None
        self._blocks: OrderedDict[str, tuple[Path, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    async def start(self, host: str = "127.0.0.1") -> None:
        """Bind the port; requests wait in its backlog until the first URL is handed out."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen(128)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.base_url = f"http://{host}:{sock.getsockname()[1]}"

    def _serve_soon(self) -> None:
        """Start serving (once), from any thread: a URL is about to be used."""
        assert self._loop is not None, "start() first"
        with self._lock:
            if self._asked:
                return
            self._asked = True
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._serving = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web

        assert self._sock is not None
        app = web.Application(client_max_size=0)  # uploads of any size, streamed to disk
        app.router.add_put("/blob/{blob_id}", self._put)
        app.router.add_get("/blob/{blob_id}", self._get)
        app.router.add_get("/block/{token}", self._block)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        if self._asked and self._serving is None:
            await asyncio.sleep(0)  # the call to _begin is on its way
        serving = self._serving
        if serving is not None:
            with contextlib.suppress(Exception):
                await serving
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._sock is not None:
            self._sock.close()

    # -- control-plane side ------------------------------------------------------------------
    def create(self) -> tuple[str, str]:
        """A new blob id and the URL to PUT its bytes to (``BlobCreate``)."""
        blob_id = ids.object_id("bl")
        self._serve_soon()
        return blob_id, f"{self.base_url}/blob/{blob_id}"

    def path(self, blob_id: str) -> Path:
        """Where an uploaded blob is; NOT_FOUND if it was never uploaded."""
        path = self.root / blob_id
        if not _valid(blob_id) or not path.is_file():
            raise RpcError("NOT_FOUND", f"blob {blob_id} was not uploaded")
        return path

    def read(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    def download_url(self, blob_id: str) -> str:
        self.path(blob_id)
        self._serve_soon()
        return f"{self.base_url}/blob/{blob_id}"

    def block_urls(self, path: Path, start: int, length: int) -> list[str]:
        """URLs of the ``BLOCK_SIZE``-aligned blocks covering ``[start, start + length)`` of
        ``path`` (read when fetched), as ``VolumeGetFile2`` answers them."""
        self._serve_soon()
        urls = []
        pos, end = start, start + length
        while pos < end:
            block_end = min(end, (pos // BLOCK_SIZE + 1) * BLOCK_SIZE)
            token = secrets.token_urlsafe(18)
            with self._lock:
                self._blocks[token] = (path, pos, block_end - pos)
                while len(self._blocks) > MAX_BLOCK_TOKENS:
                    self._blocks.popitem(last=False)
            urls.append(f"{self.base_url}/block/{token}")
            pos = block_end
        return urls

    # -- HTTP side ---------------------------------------------------------------------------
    async def _put(self, request: web.Request) -> web.Response:
        from aiohttp import web

        blob_id = request.match_info["blob_id"]
        if not _valid(blob_id):
            return web.Response(status=400, text=f"bad blob id {blob_id!r}")
        md5 = hashlib.md5()  # S3's ETag, not security
        partial = self.root / f".{blob_id}.{secrets.token_hex(4)}"
        with open(partial, "wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                md5.update(chunk)
                out.write(chunk)
        expected = request.headers.get("Content-MD5")
        if expected and base64.b64decode(expected) != md5.digest():
            partial.unlink()
            return web.Response(
                status=400, text="The Content-MD5 you specified did not match what we received."
            )
        os.replace(partial, self.root / blob_id)
        return web.Response(headers={"ETag": f'"{md5.hexdigest()}"'})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        blob_id = request.match_info["blob_id"]
        path = self.root / blob_id
        if not _valid(blob_id) or not path.is_file():
            return web.Response(status=404, text="no such blob")
        return web.FileResponse(path)

    async def _block(self, request: web.Request) -> web.Response:
        from aiohttp import web

        with self._lock:
            found = self._blocks.get(request.match_info["token"])
        if found is None:
            return web.Response(status=404, text="no such block (expired?)")
        path, offset, length = found
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as exc:
            return web.Response(status=404, text=f"the file is gone: {exc}")
        return web.Response(body=data, content_type="application/octet-stream")


def _valid(blob_id: str) -> bool:
    """A blob id of ours (never a path: ``/``, ``..`` or a hidden partial upload)."""
    return bool(blob_id) and blob_id.isascii() and blob_id.replace("-", "").isalnum()
