"""The ``modal.client.ModalClient`` service: apps, images, secrets and sandbox lifecycle.

Only what the sandbox code paths of the 1.6 client use is implemented (see the wire spec,
``docs/research/modal-protocol-1.6.4.md`` §8); every other RPC answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import empty_pb2  # type: ignore[import-untyped]
from modal_proto import api_grpc, api_pb2

from .. import authproxy
from . import ids, images, logs, volumes
from .blobs import BlobStore
from .mounts import MountStore
from .records import EmuSandbox
from .registry import Registry
from .rpc_error import RpcError
from .sandboxes import SandboxManager
from .servicer import fill_unimplemented
from .snapshots import MEMORY_REFUSED, NO_EXPIRY, Snapshots
from .stdio import follow_buffer, follow_file

Stream = Any  # grpclib.server.Stream[Request, Response]
T = TypeVar("T")

IMAGE_BUILDER_VERSION = "2025.06"
MAX_LONG_POLL = 55.0  # never hold a long-poll longer than the client's attempt deadline
_R = api_pb2.GenericResult


def _tags(sb_tags: dict[str, str]) -> list[api_pb2.SandboxTag]:
    return [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sb_tags.items()]


@fill_unimplemented
class ControlPlane(api_grpc.ModalClientBase):
    """Modal's control plane, backed by a :class:`SandboxManager`."""

    def __init__(
        self,
        registry: Registry,
        image_store: images.ImageService,
        sandboxes: SandboxManager,
        signer: ids.TokenSigner,
        *,
        blobs: BlobStore,
        list_page_size: int = 100,
        mounts: MountStore | None = None,
    ) -> None:
        self.registry = registry
        self.images = image_store
        self.blobs = blobs
        self.mounts = mounts or MountStore(blobs)
        self.sandboxes = sandboxes
        self.volumes = sandboxes.volumes
        self.signer = signer
        self.snapshots = Snapshots(sandboxes, image_store)  # the server shares the router's
        self.router_url = ""  # set once the server knows its port
        self.list_page_size = list_page_size

    # -- client, apps, environments ----------------------------------------------------------
    async def ClientHello(self, stream: Stream) -> None:
        await stream.recv_message()
        await stream.send_message(
            api_pb2.ClientHelloResponse(image_builder_version=IMAGE_BUILDER_VERSION)
        )

    async def AppGetOrCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        app = self.registry.app_get_or_create(
            req.app_name, req.environment_name, req.object_creation_type
        )
        meta = api_pb2.AppHandleMetadata(app_id=app.id, environment_name=app.environment)
        await stream.send_message(
            api_pb2.AppGetOrCreateResponse(app_id=app.id, handle_metadata=meta)
        )

    async def AppStop(self, stream: Stream) -> None:
        """``modal app stop``: terminate every running sandbox of the app."""
        req = await stream.recv_message()
        victims = [sb for sb in self.sandboxes.all() if sb.app_id == req.app_id and sb.running]
        await asyncio.gather(*(self.sandboxes.terminate(sb) for sb in victims))
        await stream.send_message(empty_pb2.Empty())

    async def EnvironmentGetOrCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        env = self.registry.environment(req.deployment_name, req.object_creation_type)
        settings = api_pb2.EnvironmentSettings(
            image_builder_version=IMAGE_BUILDER_VERSION, webhook_suffix="modal.run"
        )
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=env.id,
                metadata=api_pb2.EnvironmentMetadata(name=env.name, settings=settings),
            )
        )

    async def AuthTokenGet(self, stream: Stream) -> None:
        await stream.recv_message()
        token = self.signer.mint({"sub": "modal-emulator"}, ttl=3600)
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=token))

    # -- images ------------------------------------------------------------------------------
    async def ImageGetOrCreate(self, stream: Stream) -> None:
        """Record the layer and start its build; a definition built here before is SUCCESS."""
        req = await stream.recv_message()
        key = bytes([req.namespace]) + req.image.SerializeToString(deterministic=True)
        layer, result = self.images.get_or_create(
            key,
            lambda: images.ImageLayer.from_request(ids.object_id("im"), req),
            force=bool(req.force_build),
        )
        resp = api_pb2.ImageGetOrCreateResponse(image_id=layer.id)
        if result is not None:  # a cache hit: no build to join
            resp.result.CopyFrom(result)
            resp.metadata.image_builder_version = IMAGE_BUILDER_VERSION
        await stream.send_message(resp)

    async def ImageFromId(self, stream: Stream) -> None:
        req = await stream.recv_message()
        await stream.send_message(self.snapshots.from_id(req.image_id))

    async def SandboxSnapshotFs(self, stream: Stream) -> None:
        """The legacy path (``MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT=1``): no ttl, kept."""
        req = await stream.recv_message()
        image_id = await self.snapshots.of_sandbox(req.sandbox_id, NO_EXPIRY)
        await stream.send_message(
            api_pb2.SandboxSnapshotFsResponse(
                image_id=image_id,
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            )
        )

    async def SandboxSnapshot(self, stream: Stream) -> None:
        await stream.recv_message()
        raise RpcError("FAILED_PRECONDITION", MEMORY_REFUSED)

    async def ImageJoinStreaming(self, stream: Stream) -> None:
        """The build's log from ``last_entry_id`` as it is written, then its result (``eof``);
        a long build ends the stream after the request's timeout and the client rejoins."""
        req = await stream.recv_message()
        hold = min(req.timeout or MAX_LONG_POLL, MAX_LONG_POLL)
        async for resp in self.images.join(req.image_id, req.last_entry_id, hold):
            await stream.send_message(resp)

    # -- mounts (build contexts) ---------------------------------------------------------------
    async def MountBatchedCheckExistence(self, stream: Stream) -> None:
        req = await stream.recv_message()
        missing = self.mounts.missing(req.sha256_hex_hashes)
        await stream.send_message(
            api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)
        )

    async def MountPutFile(self, stream: Stream) -> None:
        req = await stream.recv_message()
        exists = self.mounts.put(req.sha256_hex, req.data, req.data_blob_id)
        await stream.send_message(api_pb2.MountPutFileResponse(exists=exists))

    async def MountGetOrCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        mount_id = self.mounts.create(
            [(f.filename, f.sha256_hex, f.mode) for f in req.files],
            name=req.deployment_name,
            environment=req.environment_name,
        )
        await stream.send_message(api_pb2.MountGetOrCreateResponse(mount_id=mount_id))

    # -- blobs (large payloads over HTTP) ------------------------------------------------------
    async def BlobCreate(self, stream: Stream) -> None:
        await stream.recv_message()
        blob_id, url = self.blobs.create()
        await stream.send_message(
            api_pb2.BlobCreateResponse(
                blob_id=blob_id,
                upload_url=url,
                blob_ids=[blob_id],
                upload_urls=api_pb2.UploadUrlList(items=[url]),
            )
        )

    async def BlobGet(self, stream: Stream) -> None:
        req = await stream.recv_message()
        await stream.send_message(
            api_pb2.BlobGetResponse(download_url=self.blobs.download_url(req.blob_id))
        )

    # -- volumes -------------------------------------------------------------------------------
    async def VolumeGetOrCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol, _ = await self._volume_io(
            self.volumes.get_or_create,
            req.deployment_name,
            req.environment_name,
            req.object_creation_type,
            req.version,
        )
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=vol.id, version=volumes.V1, metadata=vol.metadata()
            )
        )

    async def VolumeGetById(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await stream.send_message(
            api_pb2.VolumeGetByIdResponse(volume_id=vol.id, metadata=vol.metadata())
        )

    async def VolumeList(self, stream: Stream) -> None:
        req = await stream.recv_message()
        found = self.volumes.named(
            req.environment_name,
            req.pagination.created_before,
            req.pagination.max_objects,
        )
        items = [
            api_pb2.VolumeListItem(
                label=v.name or "", volume_id=v.id, created_at=v.created_at, metadata=v.metadata()
            )
            for v in found
        ]
        await stream.send_message(
            api_pb2.VolumeListResponse(items=items, environment_name=req.environment_name)
        )

    async def VolumeDelete(self, stream: Stream) -> None:
        req = await stream.recv_message()
        await self._volume_io(self.volumes.delete, req.volume_id)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeRename(self, stream: Stream) -> None:
        req = await stream.recv_message()
        await self._volume_io(self.volumes.rename, req.volume_id, req.name)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeHeartbeat(self, stream: Stream) -> None:
        req = await stream.recv_message()
        self.volumes.beat(req.volume_id)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeCommit(self, stream: Stream) -> None:
        """From outside a container there is nothing to commit (as Modal's ``commit()`` says,
        it runs in a container that mounts the volume)."""
        req = await stream.recv_message()
        self.volumes.get(req.volume_id)
        raise RpcError(
            "FAILED_PRECONDITION",
            "Volume.commit() commits the changes of the container it runs in, and this call "
            "comes from outside any: in a sandbox, run `sync <mount path>` there (its changes "
            "are also committed in the background and when it ends)",
        )

    async def VolumeReload(self, stream: Stream) -> None:
        req = await stream.recv_message()
        self.volumes.get(req.volume_id)
        raise RpcError(
            "FAILED_PRECONDITION",
            "Volume.reload() reloads the container it runs in, and this call comes from outside "
            "any: use sandbox.reload_volumes()",
        )

    async def VolumeListFiles(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await self.sandboxes.settled(vol.id)
        entries = await self._volume_io(self.volumes.list_files, vol, req.path, req.recursive)
        if req.max_entries:
            entries = entries[: req.max_entries]
        for start in range(0, len(entries), 100):
            await stream.send_message(
                api_pb2.VolumeListFilesResponse(entries=entries[start : start + 100])
            )

    async def VolumeGetFile2(self, stream: Stream) -> None:
        """The file's size and one download URL per 8 MiB block of the requested range."""
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await self.sandboxes.settled(vol.id)
        path = await self._volume_io(self.volumes.file, vol, req.path)
        size = path.stat().st_size
        start = min(req.start, size)
        length = min(req.len, size - start) if req.len else size - start
        await stream.send_message(
            api_pb2.VolumeGetFile2Response(
                get_urls=self.blobs.block_urls(path, start, length),
                size=size,
                start=start,
                len=length,
            )
        )

    async def VolumePutFiles(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await self.sandboxes.settled(vol.id)
        files = [
            (f.filename, f.mode, functools.partial(self.mounts.content, f.sha256_hex))
            for f in req.files
        ]
        await self._volume_io(
            self.volumes.put_files, vol, files, overwrite=not req.disallow_overwrite_existing_files
        )
        await stream.send_message(empty_pb2.Empty())

    async def VolumeRemoveFile(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await self.sandboxes.settled(vol.id)
        await self._volume_io(self.volumes.remove, vol, req.path, req.recursive)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeCopyFiles(self, stream: Stream) -> None:
        req = await stream.recv_message()
        vol = self.volumes.get(req.volume_id)
        await self.sandboxes.settled(vol.id)
        await self._volume_io(self.volumes.copy, vol, list(req.src_paths), req.dst_path)
        await stream.send_message(empty_pb2.Empty())

    async def _volume_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A volume store call (file I/O) on the emulator's thread pool."""
        return await self.sandboxes.blocking(fn, *args, **kwargs)

    # -- secrets -----------------------------------------------------------------------------
    async def SecretGetOrCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        secret = self.registry.secret_get_or_create(
            req.deployment_name,
            req.environment_name,
            req.object_creation_type,
            dict(req.env_dict),
            list(req.required_keys),
        )
        meta = api_pb2.SecretMetadata(
            name=secret.name or "", keys=sorted(secret.env), environment_name=secret.environment
        )
        await stream.send_message(
            api_pb2.SecretGetOrCreateResponse(secret_id=secret.id, metadata=meta)
        )

    async def SecretDelete(self, stream: Stream) -> None:
        req = await stream.recv_message()
        self.registry.secret_delete(req.secret_id)
        await stream.send_message(empty_pb2.Empty())

    # -- sandboxes ---------------------------------------------------------------------------
    def _access(self, sb: EmuSandbox) -> api_pb2.CommandRouterAccess:
        jwt = self.signer.mint({"task_id": sb.task_id, "sandbox_id": sb.id}, ttl=3600)
        return api_pb2.CommandRouterAccess(url=self.router_url, jwt=jwt)

    async def SandboxCreateV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = await self.sandboxes.create(req, stream.metadata.get("x-idempotency-key"))
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=sb.id,
                task_id=sb.task_id,
                tunnels=sb.create_tunnels,
                metadata=sb.metadata(),
                command_router_access=self._access(sb),
            )
        )

    async def SandboxWaitV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        await self.sandboxes.wait(sb, min(max(req.timeout, 0.0), MAX_LONG_POLL))
        resp = api_pb2.SandboxWaitResponse(metadata=sb.metadata())
        if sb.result is not None:
            resp.result.CopyFrom(sb.result)
        await stream.send_message(resp)

    SandboxWait = SandboxWaitV2

    async def SandboxTerminateV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        existing = await self.sandboxes.terminate(sb)
        await stream.send_message(api_pb2.SandboxTerminateResponse(existing_result=existing))

    SandboxTerminate = SandboxTerminateV2

    async def SandboxGetTaskIdV2(self, stream: Stream) -> None:
        """The task id, also of a finished sandbox (with its result), as Modal answers: a fresh
        handle reads a finished sandbox's output and logs through it; an exec there is refused
        by the router (NOT_FOUND), readiness with FAILED_PRECONDITION."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        resp = api_pb2.SandboxGetTaskIdResponse(task_id=sb.task_id)
        if sb.result is not None:
            resp.task_result.CopyFrom(sb.result)
        await stream.send_message(resp)

    # -- logs (sb.logs.tail / fetch) -----------------------------------------------------------
    def _logged(self, req: Any) -> list[tuple[str, str, list[logs.LogLine]]]:
        """``(task id, sandbox id, lines)`` of the sandboxes a logs request is about."""
        if req.sandbox_id:
            targets = [self.sandboxes.get(req.sandbox_id)]
        elif req.task_id:
            targets = [self.sandboxes.by_task(req.task_id)]
        else:
            targets = [sb for sb in self.sandboxes.all() if sb.app_id == req.app_id]
        since = _seconds(req.since) if req.HasField("since") else None
        until = _seconds(req.until) if req.HasField("until") else None
        return [
            (
                sb.task_id,
                sb.id,
                sb.log.select(since=since, until=until, fd=req.source, search=req.search_text),
            )
            for sb in targets
            if not req.app_id or sb.app_id == req.app_id
        ]

    async def AppFetchLogs(self, stream: Stream) -> None:
        req = await stream.recv_message()
        found = self._logged(req)
        await stream.send_message(
            api_pb2.AppFetchLogsResponse(batches=logs.batches(found, req.limit))
        )

    async def AppCountLogs(self, stream: Stream) -> None:
        req = await stream.recv_message()
        lines = [line for _, _, found in self._logged(req) for line in found]
        await stream.send_message(
            api_pb2.AppCountLogsResponse(
                app_id=req.app_id, buckets=logs.buckets(lines, req.bucket_secs)
            )
        )

    # -- the V1 sandbox path (pty=True, gpu=, MODAL_SANDBOX_V2=0) ------------------------------
    async def SandboxCreate(self, stream: Stream) -> None:
        req = await stream.recv_message()
        v2 = api_pb2.SandboxCreateV2Request(app_id=req.app_id, definition=req.definition)
        v2.tags.extend(req.tags)
        sb = await self.sandboxes.create(v2, stream.metadata.get("x-idempotency-key"))
        await stream.send_message(
            api_pb2.SandboxCreateResponse(sandbox_id=sb.id, metadata=sb.metadata())
        )

    async def SandboxGetTaskId(self, stream: Stream) -> None:
        """V1 polls this right after create: the task id stays known after the end."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        resp = api_pb2.SandboxGetTaskIdResponse(task_id=sb.task_id)
        if sb.result is not None:
            resp.task_result.CopyFrom(sb.result)
        await stream.send_message(resp)

    async def SandboxGetLogs(self, stream: Stream) -> None:
        """V1 entrypoint output: text batches, ``entry_id`` = bytes consumed, ``eof`` at the end."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        fd = req.file_descriptor or api_pb2.FILE_DESCRIPTOR_STDOUT
        local = await self.sandboxes.started(sb)
        if local is None:  # it ended before its container started: no output
            await stream.send_message(
                api_pb2.TaskLogsBatch(entry_id=req.last_entry_id or "0", eof=True, sandbox_id=sb.id)
            )
            return
        stderr = req.file_descriptor == api_pb2.FILE_DESCRIPTOR_STDERR
        path = local.stderr_path if stderr else local.stdout_path
        late = sb.entrypoint  # a command started after setup: its output is buffered here
        try:
            offset = int(req.last_entry_id or 0)
        except ValueError:
            raise RpcError(
                "INVALID_ARGUMENT", f"last_entry_id {req.last_entry_id!r} is not ours"
            ) from None
        hold = min(req.timeout or MAX_LONG_POLL, MAX_LONG_POLL)
        deadline = time.monotonic() + hold
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        read_to = offset
        if late is not None:
            buffer = late.stderr if stderr else late.stdout
            chunks = follow_buffer(buffer, offset, deadline=deadline)
        else:
            chunks = follow_file(path, offset, lambda: not sb.running, deadline=deadline)
        async for chunk in chunks:
            read_to += len(chunk)
            text = decoder.decode(chunk)
            consumed = read_to - len(decoder.getstate()[0])  # keep split characters for later
            if text:
                await stream.send_message(
                    api_pb2.TaskLogsBatch(
                        items=[api_pb2.TaskLogs(data=text, file_descriptor=fd)],
                        entry_id=str(consumed),
                        sandbox_id=sb.id,
                    )
                )
        size = (late.stderr if stderr else late.stdout).size if late else _file_size(path)
        if not sb.running and read_to >= size:  # else: the client re-polls
            tail = decoder.decode(b"", final=True)
            items = [api_pb2.TaskLogs(data=tail, file_descriptor=fd)] if tail else []
            await stream.send_message(
                api_pb2.TaskLogsBatch(
                    items=items, entry_id=str(read_to), eof=True, sandbox_id=sb.id
                )
            )

    async def SandboxStdinWrite(self, stream: Stream) -> None:
        """V1 stdin: numbered writes (from 1); a retried index is dropped."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        if req.index > sb.v1_stdin_index:
            await self.sandboxes.write_stdin(sb, sb.stdin_written, req.input, req.eof)
            sb.v1_stdin_index = req.index
        await stream.send_message(api_pb2.SandboxStdinWriteResponse())

    async def SandboxGetCommandRouterAccess(self, stream: Stream) -> None:
        req = await stream.recv_message()
        if req.WhichOneof("target") == "task_id":
            sb = self.sandboxes.by_task(req.task_id)
        else:
            sb = self.sandboxes.get(req.sandbox_id)
        access = self._access(sb)
        await stream.send_message(
            api_pb2.SandboxGetCommandRouterAccessResponse(
                jwt=access.jwt, url=access.url, worker_ipv4_address="127.0.0.1"
            )
        )

    async def TaskGetCommandRouterAccess(self, stream: Stream) -> None:
        req = await stream.recv_message()
        access = self._access(self.sandboxes.by_task(req.task_id))
        await stream.send_message(
            api_pb2.TaskGetCommandRouterAccessResponse(jwt=access.jwt, url=access.url)
        )

    async def SandboxCreateConnectTokenV2(self, stream: Stream) -> None:
        """A token for this emulator's auth proxy (``authproxy.py``) in front of the port."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        local = await self.sandboxes.container(sb)
        if not sb.running:
            raise RpcError("FAILED_PRECONDITION", f"Sandbox {sb.id} has already finished")
        port = req.port or 8080

        def upstream() -> tuple[str, int]:
            return local.tunnel(port, declared=False)

        creds = authproxy.proxy().issue(sb.id, upstream)
        await stream.send_message(
            api_pb2.SandboxCreateConnectTokenResponse(url=creds.url, token=creds.token)
        )

    SandboxCreateConnectToken = SandboxCreateConnectTokenV2

    async def SandboxGetTunnelsV2(self, stream: Stream) -> None:
        """All tunnels once the container runs (under a start latency: a long-poll for it,
        TIMEOUT if it is not up within the request's timeout); a finished sandbox has none."""
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        if sb.container is None and sb.running:
            hold = min(req.timeout or MAX_LONG_POLL, MAX_LONG_POLL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.sandboxes.started(sb), hold)
        if sb.container is None and sb.running:
            await stream.send_message(
                api_pb2.SandboxGetTunnelsResponse(result=_R(status=_R.GENERIC_STATUS_TIMEOUT))
            )
            return
        if sb.result is not None:
            await stream.send_message(api_pb2.SandboxGetTunnelsResponse(result=sb.result))
            return
        await stream.send_message(
            api_pb2.SandboxGetTunnelsResponse(
                result=_R(status=_R.GENERIC_STATUS_SUCCESS), tunnels=sb.tunnels
            )
        )

    SandboxGetTunnels = SandboxGetTunnelsV2

    async def SandboxGetFromNameV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.by_name(
            req.app_name, req.environment_name, req.sandbox_name, req.include_terminated
        )
        await stream.send_message(
            api_pb2.SandboxGetFromNameResponse(sandbox_id=sb.id, metadata=sb.metadata())
        )

    # The client falls back to the V1 RPC on NOT_FOUND; it must say NOT_FOUND too.
    SandboxGetFromName = SandboxGetFromNameV2

    async def SandboxListV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        found = self.sandboxes.query(
            app_id=req.app_id,
            environment=req.environment_name,
            tags={t.tag_name: t.tag_value for t in req.tags},
            before=req.before_timestamp,
            include_finished=req.include_finished,
            limit=self.list_page_size,
        )
        await stream.send_message(
            api_pb2.SandboxListResponse(sandboxes=[sb.info() for sb in found])
        )

    SandboxList = SandboxListV2

    async def SandboxTagsSetV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        tags = {t.tag_name: t.tag_value for t in req.tags}
        sb.tags = tags
        if sb.running and sb.container is not None:  # else: given to the container at start
            try:
                await self.sandboxes.blocking(sb.local.set_tags, tags)
            except Exception:  # the runtime's copy is informational; ours is authoritative
                pass
        await stream.send_message(empty_pb2.Empty())

    SandboxTagsSet = SandboxTagsSetV2

    async def SandboxTagsGetV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        await stream.send_message(api_pb2.SandboxTagsGetResponse(tags=_tags(sb.tags)))

    SandboxTagsGet = SandboxTagsGetV2

    async def SandboxSetName(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.get(req.sandbox_id)
        if sb.name == req.name:
            await stream.send_message(api_pb2.SandboxSetNameResponse())
            return
        if sb.name is not None:
            raise RpcError("FAILED_PRECONDITION", f"Sandbox already has the name {sb.name!r}")
        holder = self.sandboxes.name_holder(sb.app_id, req.name)
        if holder is not None:
            raise RpcError("ALREADY_EXISTS", f"Sandbox with name {req.name!r} already exists")
        sb.name = req.name
        await stream.send_message(api_pb2.SandboxSetNameResponse())


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def _file_size(path: Any) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
