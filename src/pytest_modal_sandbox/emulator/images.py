"""``modal.Image`` layers: recorded per image id, built, cached, and run as sandbox roots.

The client sends one ``ImageGetOrCreate`` per layer, base first, each after the previous one
was built.  The emulator records the layer, starts its build at once (as Modal does), and the
client follows it with ``ImageJoinStreaming`` (the log, then SUCCESS or FAILURE).  A definition
this emulator already built answers SUCCESS straight away (no join).

Where a chain's root comes from (``images`` mode, the CLI's ``--images``):

``pull``
    ``FROM <ref>`` is pulled, verified and unpacked by :mod:`pytest_modal_sandbox.images` (the
    same cache as the local backend); a base that cannot be had fails the build.
``host``
    every base is the host root, a private view of it (the emulator's behaviour before real
    images);
    ``RUN``/``COPY`` steps are skipped with a warning, ``ENV``/``WORKDIR`` still apply.
``--host-image PATTERN``
    references matching the ``fnmatch`` pattern run on the host root under any mode.
``auto`` (default)
    ``pull``, and where a base cannot be had (offline, unknown image), the host root with a
    warning in the build log and on the emulator's stderr.  ``modal.Image.debian_slim()`` - the
    client's default image - is ``FROM python:3.x-slim-...``, so offline it runs on the host.

Modal's own base images (``debian_slim()``, ``micromamba()``: the layers the client sends in
Modal's *global* namespace, what a sandbox gets when no image is named) fall back to the host
root with a warning under ``pull`` too: they stand for "Modal's default environment", not for
an image a test asked for, and a test that names no image runs on the host on the local backend
as well.  Images a test names (``from_registry``) stay strict under ``pull``.

``RUN``/``COPY`` steps are built by :mod:`.builder` and cached on disk by the chain
(:mod:`.build_cache`).  :meth:`ImageService.state_for` is the seam from an image id to what a
sandbox runs on: root, env, workdir.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fnmatch
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modal_proto import api_pb2

from . import dockerfile as df
from .build_cache import ImageState
from .builder import Builder, BuildFailed, BuildLog, LayerBuild
from .mounts import ContextFile, MountStore
from .rpc_error import RpcError

__all__ = ["HOST", "IMAGES_MODES", "ImageLayer", "ImageService", "ImagesMode"]

ImagesMode = Literal["host", "pull", "auto"]
IMAGES_MODES: tuple[str, ...] = ("host", "pull", "auto")
HOST = ImageState(key="host", rootfs=None, description="the host root")
_R = api_pb2.GenericResult
_FD = {
    "info": api_pb2.FILE_DESCRIPTOR_INFO,
    "stdout": api_pb2.FILE_DESCRIPTOR_STDOUT,
    "stderr": api_pb2.FILE_DESCRIPTOR_STDERR,
}


@dataclass(frozen=True)
class ImageLayer:
    """One ``ImageGetOrCreate`` request, reduced to what a local build uses."""

    id: str
    dockerfile_commands: tuple[str, ...]
    base_images: tuple[tuple[str, str], ...]  # (docker_tag, image_id), in request order
    namespace: int = 0
    context_files: tuple[tuple[str, bytes], ...] = ()
    context_mount_id: str = ""
    secret_ids: tuple[str, ...] = ()
    force_build: bool = False
    unsupported: str | None = None  # why this layer cannot be built here

    @classmethod
    def from_request(cls, image_id: str, req: Any) -> ImageLayer:
        image = req.image
        unsupported = None
        if image.HasField("build_function") or req.build_function_id:
            unsupported = "Image.run_function() builds need Modal functions"
        return cls(
            image_id,
            tuple(image.dockerfile_commands),
            tuple((b.docker_tag, b.image_id) for b in image.base_images),
            req.namespace,
            tuple((f.filename, bytes(f.data)) for f in image.context_files),
            image.context_mount_id,
            tuple(image.secret_ids),
            bool(req.force_build),
            unsupported,
        )


class _Build(BuildLog):
    """One layer's build: its task, its log (as TaskLogs entries) and its result."""

    def __init__(self) -> None:
        self.entries: list[api_pb2.TaskLogs] = []
        self.result: api_pb2.GenericResult | None = None
        self.state: ImageState | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self._changed = asyncio.Event()
        self._decoders = {
            fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in ("stdout", "stderr")
        }

    def _add(self, fd: str, text: str) -> None:
        if text:
            self.entries.append(api_pb2.TaskLogs(data=text, file_descriptor=_FD[fd]))
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def info(self, text: str) -> None:
        self._add("info", text)

    def output(self, data: bytes, *, stderr: bool) -> None:
        fd = "stderr" if stderr else "stdout"
        self._add(fd, self._decoders[fd].decode(data))

    def finish(self, result: api_pb2.GenericResult, state: ImageState | None) -> None:
        for fd, decoder in self._decoders.items():
            self._add(fd, decoder.decode(b"", final=True))
        self.result = result
        self.state = state
        self.done.set()
        self._wake()

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


@dataclass
class _Record:
    layer: ImageLayer
    build: _Build = field(default_factory=_Build)
    expires_at: float | None = None  # a snapshot's ttl


class ImageService:
    """Image layers by id, deduplicated by their serialized definition, and their builds."""

    def __init__(
        self,
        builder: Builder,
        *,
        mode: ImagesMode = "auto",
        pull: Callable[[str, Callable[[str], None]], Any] | None = None,
        secret_env: Callable[[str], Mapping[str, str]] = lambda _id: {},
        mounts: MountStore | None = None,
        warn: Callable[[str], None] = lambda _msg: None,
        build_timeout: float = 3600.0,
        builder_version: str = "",
        host_images: Sequence[str] = (),
    ) -> None:
        if mode not in IMAGES_MODES:
            raise ValueError(f"images mode must be one of {', '.join(IMAGES_MODES)}: {mode!r}")
        self.builder = builder
        self.mode: ImagesMode = mode
        self._pull = pull or _pull_with_image_store
        self._secret_env = secret_env
        self._mounts = mounts or MountStore()
        self._warn = warn
        self._build_timeout = build_timeout
        self._builder_version = builder_version
        self.host_images = tuple(host_images)  # fnmatch patterns of refs run on the host root
        self._by_id: dict[str, _Record] = {}
        self._by_key: dict[bytes, str] = {}

    # -- records -------------------------------------------------------------------------------
    def get_or_create(
        self, key: bytes, make_layer: Callable[[], ImageLayer], *, force: bool = False
    ) -> tuple[ImageLayer, api_pb2.GenericResult | None]:
        """The layer for ``key`` and, when it was already built here, its SUCCESS result.

        A new definition gets a new id and its build starts now; so does a known one that
        failed (a retry builds again) or is asked for with ``force`` (``force_build=True``).
        """
        image_id = self._by_key.get(key)
        if image_id is not None and not force:
            record = self._by_id[image_id]
            result = record.build.result
            if result is None or result.status == _R.GENERIC_STATUS_SUCCESS:
                return record.layer, result
        layer = make_layer()
        record = _Record(layer)
        self._by_key[key] = layer.id
        self._by_id[layer.id] = record
        record.build.task = asyncio.get_running_loop().create_task(self._run(record))
        return layer, None

    def known(self, image_id: str) -> bool:
        record = self._by_id.get(image_id)
        return record is not None and not _expired(record)

    def add_built(self, image_id: str, state: ImageState, *, expires_at: float | None) -> None:
        """Record an Image made here without a build (a filesystem snapshot)."""
        record = _Record(ImageLayer(image_id, (), ()), expires_at=expires_at)
        record.build.finish(_R(status=_R.GENERIC_STATUS_SUCCESS), state)
        self._by_id[image_id] = record

    def expired(self) -> list[str]:
        """Ids of Images past their ttl, forgotten now."""
        gone = [i for i, record in self._by_id.items() if _expired(record)]
        for image_id in gone:
            del self._by_id[image_id]
        return gone

    def chain(self, image_id: str) -> list[ImageLayer]:
        """The layers from the base to ``image_id``; unknown (stale) ids contribute nothing."""
        out: list[ImageLayer] = []
        seen: set[str] = set()

        def visit(current: str) -> None:
            if current in seen:
                return
            seen.add(current)
            record = self._by_id.get(current)
            if record is None:
                return
            for _, base_id in record.layer.base_images:
                visit(base_id)
            out.append(record.layer)

        visit(image_id)
        return out

    async def state_for(self, image_id: str) -> ImageState:
        """What a sandbox of ``image_id`` runs on (waiting for its build if need be).

        Unknown ids (a client's default image hydrated by an earlier emulator) run on the host
        root, as every image did before real images.
        """
        record = self._by_id.get(image_id)
        if record is None:
            return HOST
        if _expired(record):
            raise RpcError("NOT_FOUND", f"Image {image_id} has expired (its ttl has passed)")
        await record.build.done.wait()
        if record.build.state is None:
            raise RpcError(
                "FAILED_PRECONDITION", f"Image {image_id} failed to build; see its build log"
            )
        return record.build.state

    def stats(self) -> dict[str, int]:
        return {
            "layers": len(self._by_id),
            "builds": self.builder.builds,
            "cache_hits": self.builder.cache_hits,
        }

    async def close(self) -> None:
        """Cancel builds in progress (their build sandboxes are terminated)."""
        tasks = [r.build.task for r in self._by_id.values() if r.build.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the join stream -------------------------------------------------------------------------
    async def join(
        self, image_id: str, last_entry_id: str, timeout: float
    ) -> AsyncIterator[api_pb2.ImageJoinStreamingResponse]:
        """Log entries after ``last_entry_id``, then the result with ``eof``; ends early
        (without a result) after ``timeout`` seconds, and the client joins again."""
        record = self._by_id.get(image_id)
        if record is None:  # a stale id: nothing to build
            yield self._final(_R(status=_R.GENERIC_STATUS_SUCCESS), "1")
            return
        build = record.build
        try:
            sent = max(0, int(last_entry_id or 0))
        except ValueError:
            raise RpcError(
                "INVALID_ARGUMENT", f"last_entry_id {last_entry_id!r} is not ours"
            ) from None
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            finished = build.result is not None  # sampled before the entries: none is missed
            if sent < len(build.entries):
                batch = build.entries[sent:]
                sent += len(batch)
                yield api_pb2.ImageJoinStreamingResponse(task_logs=batch, entry_id=str(sent))
                continue
            if finished:
                assert build.result is not None
                yield self._final(build.result, str(sent))
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await build.changed(remaining)

    def _final(self, result: api_pb2.GenericResult, entry_id: str) -> Any:
        return api_pb2.ImageJoinStreamingResponse(
            result=result,
            entry_id=entry_id,
            eof=True,
            metadata=api_pb2.ImageMetadata(image_builder_version=self._builder_version),
        )

    # -- building ----------------------------------------------------------------------------
    async def _run(self, record: _Record) -> None:
        build = record.build
        try:
            state = await self._build(record.layer, build)
        except BuildFailed as exc:
            build.info(f"build failed: {exc}\n")
            build.finish(_R(status=_R.GENERIC_STATUS_FAILURE, exception=str(exc)), None)
        except asyncio.CancelledError:
            build.finish(
                _R(status=_R.GENERIC_STATUS_TERMINATED, exception="the emulator is shutting down"),
                None,
            )
            raise
        except Exception as exc:  # a bug of ours: still an answer, never a hung client
            self._warn(f"building image {record.layer.id} failed unexpectedly: {exc!r}")
            build.finish(
                _R(status=_R.GENERIC_STATUS_FAILURE, exception=f"emulator error: {exc!r}"), None
            )
        else:
            build.finish(_R(status=_R.GENERIC_STATUS_SUCCESS), state)

    async def _build(self, layer: ImageLayer, log: _Build) -> ImageState:
        if layer.unsupported:
            raise BuildFailed(f"{layer.unsupported}, which the emulator does not implement")
        tags = [tag for tag, _ in layer.base_images]
        try:
            steps = df.parse(layer.dockerfile_commands, tags)
        except df.DockerfileError as exc:
            raise BuildFailed(str(exc)) from None
        first = steps[0] if steps and isinstance(steps[0], df.From) else None
        if first is not None and not first.is_base:
            parent = await self._base(
                first.ref, log, modal_default=layer.namespace == api_pb2.DEPLOYMENT_NAMESPACE_GLOBAL
            )
        elif layer.base_images:
            tag = first.ref if first is not None else tags[0]
            parent = await self._parent(dict(layer.base_images)[tag])
        else:
            raise BuildFailed("the layer has no FROM line and no base image")
        secret_env: dict[str, str] = {}
        for secret_id in layer.secret_ids:
            try:
                secret_env.update(self._secret_env(secret_id))
            except RpcError as exc:
                raise BuildFailed(f"build secret {secret_id}: {exc.message}") from None
        context: dict[str, ContextFile] = {}
        if layer.context_mount_id:
            try:
                context.update(self._mounts.files(layer.context_mount_id))
            except RpcError as exc:
                raise BuildFailed(f"build context: {exc.message}") from None
        for name, data in layer.context_files:
            context[name.lstrip("/")] = ContextFile(data)
        work = LayerBuild(
            steps=[s for s in steps if not isinstance(s, df.From)],
            context=context,
            secret_env=secret_env,
            force=layer.force_build,
            timeout=self._build_timeout,
        )
        return await self.builder.build(parent, work, log)

    async def _parent(self, image_id: str) -> ImageState:
        record = self._by_id.get(image_id)
        if record is None:
            return HOST  # stale: it ran on the host root before, as every image did
        await record.build.done.wait()
        if record.build.state is None:
            raise BuildFailed(f"its base image {image_id} failed to build")
        return record.build.state

    async def _base(self, ref: str, log: _Build, *, modal_default: bool = False) -> ImageState:
        if self.mode == "host":
            log.info(f"FROM {ref}: the host root (--images=host)\n")
            return _host(ref)
        pattern = next((p for p in self.host_images if fnmatch.fnmatchcase(ref, p)), None)
        if pattern is not None:
            log.info(f"FROM {ref}: the host root (--host-image {pattern})\n")
            return _host(ref)
        log.info(f"FROM {ref}\n")
        loop = asyncio.get_running_loop()

        def progress(message: str) -> None:
            loop.call_soon_threadsafe(log.info, message + "\n")

        from ..images import ImageError

        try:
            root = await asyncio.to_thread(self._pull, ref, progress)
        except ImageError as exc:
            if self.mode == "pull" and not modal_default:
                raise BuildFailed(
                    f"cannot pull {ref}: {exc} (or start the emulator with --images=auto to "
                    "fall back to the host root)"
                ) from None
            message = f"{ref} runs on the host root, read-only: it cannot be pulled: {exc}"
            log.info(f"WARNING: {message}\n")
            self._warn(message)
            return _host(ref)
        return ImageState(
            key=f"oci:{root.config_digest}",
            rootfs=root.path,
            env=dict(root.env),
            workdir=root.workdir,
            lock_path=root.lock_path,
            description=ref,
        )


def _expired(record: _Record) -> bool:
    return record.expires_at is not None and time.time() >= record.expires_at


def _host(ref: str) -> ImageState:
    return ImageState(key="host", rootfs=None, description=f"{ref} mapped to the host root")


def _pull_with_image_store(ref: str, progress: Callable[[str], None]) -> Any:
    from ..images import ImageStore

    return ImageStore(progress=progress).get(ref)
