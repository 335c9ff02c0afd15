"""Assembles the emulator: both Modal services and a small admin service on one grpclib port.

:class:`Emulator` is the asyncio object (start/stop on a running loop); :func:`serve` runs one
in a background thread of the current process (tests, benchmarks); the CLI in ``__main__`` runs
one in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
from google.protobuf import empty_pb2, wrappers_pb2  # type: ignore[import-untyped]
from grpclib import GRPCError, Status

from .._paths import state_root
from ..runtime import LocalRuntime
from . import ids, images
from .blobs import BlobStore
from .build_cache import BuildCache
from .builder import Builder
from .chaos import Chaos, ChaosOptions
from .control import IMAGE_BUILDER_VERSION, ControlPlane
from .mounts import MountStore
from .records import IdleStatus
from .registry import Registry
from .router import Router
from .rpc_error import RpcError
from .sandboxes import SandboxManager
from .servicer import Instrumented, Stats
from .snapshots import Snapshots
from .status_details import CODEC as STATUS_DETAILS
from .tls import TlsMaterial, make_tls_material
from .volumes import VolumeStore

ADMIN_SERVICE = "/pytest_modal_sandbox.emulator.Admin"
DRAIN_SECONDS = 2.0  # at stop, how long pending RPCs get to send their final answers


@dataclass
class EmulatorOptions:
    """Everything the CLI accepts, as one value (see ``python -m ... --help``)."""

    host: str = "127.0.0.1"
    port: int = 0
    token_id: str | None = None
    token_secret: str | None = None
    latency_ms: float = 0.0
    start_latency_ms: float = 0.0  # from SandboxCreate until the container runs
    state_dir: str | None = None
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    environments: Sequence[str] = ()
    idle_timeout_status: IdleStatus = "timeout"
    list_page_size: int = 100
    images: str = "auto"  # host | pull | auto: see images.py
    host_images: Sequence[str] = ()  # fnmatch patterns of references run on the host root
    build_timeout: float = 3600.0  # seconds per image layer build
    build_cache_dir: str | None = None  # default: <cache root>/emulator-builds
    fault_rate: float = 0.0  # fraction of RPCs that fail transiently (see chaos.py)
    create_rate: float = 0.0  # sandbox creates per second, 0 = unlimited
    max_sandboxes: int = 0  # running sandboxes at once, 0 = unlimited
    seed: int | None = None  # for reproducible faults

    def __post_init__(self) -> None:
        if (self.token_id is None) != (self.token_secret is None):
            raise ValueError("token_id and token_secret must be given together")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.start_latency_ms < 0:
            raise ValueError(f"start_latency_ms must be >= 0, got {self.start_latency_ms}")
        if self.list_page_size < 1:
            raise ValueError(f"list_page_size must be >= 1, got {self.list_page_size}")
        if self.images not in images.IMAGES_MODES:
            raise ValueError(
                f"images must be one of {', '.join(images.IMAGES_MODES)}, got {self.images!r}"
            )
        if not self.build_timeout > 0:
            raise ValueError(f"build_timeout must be > 0, got {self.build_timeout}")
        if self.idle_timeout_status not in ("timeout", "terminated", "idle_timeout"):
            raise ValueError(f"idle_timeout_status {self.idle_timeout_status!r} is not valid")
        self.chaos_options()  # validates

    def chaos_options(self) -> ChaosOptions:
        return ChaosOptions(
            fault_rate=self.fault_rate,
            create_rate=self.create_rate,
            max_sandboxes=self.max_sandboxes,
            seed=self.seed,
        )


def log_status(message: str) -> None:
    """A status line on stderr (warnings the user should see, e.g. an image run on the host)."""
    print(f"modal emulator: {message}", file=sys.stderr, flush=True)


class _Admin:
    """``Stats`` (JSON RPC counts), ``ResetStats`` and ``EndSandbox`` (JSON ``{"sandbox_id",
    "how"}``: end a sandbox from outside), for benchmarks and tests."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            f"{ADMIN_SERVICE}/Stats": grpclib.const.Handler(
                self._stats, unary, empty_pb2.Empty, wrappers_pb2.StringValue
            ),
            f"{ADMIN_SERVICE}/ResetStats": grpclib.const.Handler(
                self._reset, unary, empty_pb2.Empty, empty_pb2.Empty
            ),
            f"{ADMIN_SERVICE}/EndSandbox": grpclib.const.Handler(
                self._end_sandbox, unary, wrappers_pb2.StringValue, empty_pb2.Empty
            ),
        }

    async def _stats(self, stream: Any) -> None:
        await stream.recv_message()
        payload = json.dumps(self._emulator.stats_snapshot())
        await stream.send_message(wrappers_pb2.StringValue(value=payload))

    async def _end_sandbox(self, stream: Any) -> None:
        req = await stream.recv_message()
        try:
            args = json.loads(req.value)
            sandbox_id, how = str(args["sandbox_id"]), str(args.get("how", "terminated"))
        except (ValueError, KeyError, TypeError):
            raise GRPCError(
                Status.INVALID_ARGUMENT, 'expected JSON {"sandbox_id": ..., "how": ...}'
            ) from None
        await self._emulator.end_sandbox(sandbox_id, how)
        await stream.send_message(empty_pb2.Empty())

    async def _reset(self, stream: Any) -> None:
        await stream.recv_message()
        self._emulator.stats.reset()
        self._emulator.chaos.reset()
        await stream.send_message(empty_pb2.Empty())


class Emulator:
    """One emulator instance; create it, ``await start()``, ``await stop()`` on one loop."""

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options or EmulatorOptions()
        self.stats = Stats()
        self.chaos = Chaos(self.options.chaos_options())
        self.port = 0
        self.tls: TlsMaterial | None = None
        self._server: grpclib.server.Server | None = None
        self._tmp: str | None = None
        self.sandboxes: SandboxManager | None = None
        self.images: images.ImageService | None = None
        self.snapshots: Snapshots | None = None
        self.blobs: BlobStore | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.tls is not None, "start() first"
        return self.tls.ca_file

    def _dirs(self) -> tuple[Path, Path, Path, Path, Path]:
        """Runtime state of sandboxes and of image build sandboxes, the TLS directory, the
        volumes (they persist: the state dir, else a fixed place in the user's state root)
        and the blobs (uploads live as long as this emulator, unless a state dir keeps them)."""
        if self.options.state_dir:
            base = Path(self.options.state_dir)
            return (
                base / "sandboxes",
                base / "builds",
                base / "tls",
                base / "volumes",
                base / "blobs",
            )
        self._tmp = tempfile.mkdtemp(prefix="modal-emulator-")
        root, tmp = state_root(), Path(self._tmp)
        return (
            root / "emulator",
            root / "emulator-builds",
            tmp / "tls",
            root / "emulator-volumes",
            tmp / "blobs",
        )

    async def start(self) -> None:
        """Make the certificates, check the runtime, and start listening."""
        opts = self.options
        sandbox_dir, builds_dir, tls_dir, volumes_dir, blobs_dir = self._dirs()
        await asyncio.to_thread(LocalRuntime.check)
        self.tls = await asyncio.to_thread(make_tls_material, tls_dir)
        registry = Registry(environments=opts.environments, secrets=opts.secrets)
        executor = ThreadPoolExecutor(64, thread_name_prefix="emulator-rt")
        loop = asyncio.get_running_loop()

        async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
            return await loop.run_in_executor(executor, lambda: fn(*args, **kwargs))

        cache = await asyncio.to_thread(BuildCache, opts.build_cache_dir)
        await asyncio.to_thread(cache.sweep)  # leftovers of builds an earlier emulator lost
        builder = Builder(cache, LocalRuntime(builds_dir), blocking=blocking)
        self.blobs = BlobStore(blobs_dir)
        await self.blobs.start(opts.host)
        mounts = MountStore(self.blobs)
        image_service = images.ImageService(
            builder,
            mounts=mounts,
            mode=opts.images,  # type: ignore[arg-type]  # checked in __post_init__
            secret_env=registry.secret_env,
            warn=log_status,
            build_timeout=opts.build_timeout,
            builder_version=IMAGE_BUILDER_VERSION,
            host_images=opts.host_images,
        )
        self.images = image_service
        signer = ids.TokenSigner()
        self.sandboxes = SandboxManager(
            LocalRuntime(sandbox_dir),
            registry,
            image_service,
            tls_contexts=(self.tls.server_context(), self.tls.server_context(h2=True)),
            idle_status=opts.idle_timeout_status,
            executor=executor,
            start_latency=opts.start_latency_ms / 1000.0,
            chaos=self.chaos,
            volumes=await asyncio.to_thread(VolumeStore, volumes_dir),
            mounts=mounts,
        )
        # fill_unimplemented made them concrete; mypy only sees the generated ABCs.
        control = ControlPlane(  # type: ignore[abstract]
            registry,
            image_service,
            self.sandboxes,
            signer,
            blobs=self.blobs,
            list_page_size=opts.list_page_size,
            mounts=mounts,
        )
        snapshots = self.snapshots = Snapshots(self.sandboxes, image_service)
        control.snapshots = snapshots
        router = Router(self.sandboxes, snapshots)  # type: ignore[abstract]
        latency = opts.latency_ms / 1000.0

        def check_control(stream: Any) -> None:
            if opts.token_id is None:
                return
            md = stream.metadata
            if (
                md.get("x-modal-token-id") != opts.token_id
                or md.get("x-modal-token-secret") != opts.token_secret
            ):
                raise GRPCError(
                    Status.UNAUTHENTICATED,
                    "Token missing or not accepted by this Modal emulator: set MODAL_TOKEN_ID "
                    "and MODAL_TOKEN_SECRET to the values given with --token-id/--token-secret",
                )

        def check_router(stream: Any) -> None:
            auth = stream.metadata.get("authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if signer.verify(token) is None:
                raise GRPCError(Status.UNAUTHENTICATED, "invalid or expired command router token")

        faults = self.chaos if opts.fault_rate > 0 else None
        self._server = grpclib.server.Server(
            [
                Instrumented(
                    control,
                    "control",
                    self.stats,
                    latency=latency,
                    check=check_control,
                    chaos=faults,
                ),
                Instrumented(
                    router, "router", self.stats, latency=latency, check=check_router, chaos=faults
                ),
                _Admin(self),
            ],
            status_details_codec=STATUS_DETAILS,  # RPCRetryPolicy, as the client reads it
        )
        await self._server.start(opts.host, opts.port)
        listener: Any = self._server._server
        self.port = int(listener.sockets[0].getsockname()[1])
        control.router_url = self.url

    async def end_sandbox(self, sandbox_id: str, how: str) -> None:
        """End a sandbox from outside (see :data:`~.sandboxes.OUTSIDE_ENDINGS`)."""
        assert self.sandboxes is not None, "start() first"
        try:
            await self.sandboxes.end(self.sandboxes.get(sandbox_id), how)
        except RpcError as err:
            raise GRPCError(Status[err.status], err.message) from None

    def stats_snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "rpcs": self.stats.snapshot(),
            "seconds": self.stats.seconds(),
            "inflight": self.stats.inflight,
            "chaos": self.chaos.snapshot(),
        }
        if self.sandboxes is not None:
            all_sbs = self.sandboxes.all()
            snap["sandboxes"] = {
                "created": len(all_sbs),
                "running": sum(1 for sb in all_sbs if sb.running),
            }
        if self.images is not None:
            snap["images"] = self.images.stats()
        return snap

    async def stop(self) -> None:
        """Terminate every sandbox this emulator started, answer pending RPCs, stop, clean up."""
        if self.images is not None:
            await self.images.close()  # builds in progress end (their build sandboxes too)
        if self.sandboxes is not None:
            await self.sandboxes.terminate_all()
            # Waiters just got their answers (terminated, exit 137, EOF): let them go out.
            deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
            while self.stats.inflight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
        if self._server is not None:
            self._server.close()
        if self.sandboxes is not None:
            await self.sandboxes.close()
            await asyncio.to_thread(self.sandboxes.volumes.close)
        if self.snapshots is not None:  # its Images are gone with it
            await asyncio.to_thread(self.snapshots.close)
        if self.blobs is not None:
            await self.blobs.close()
        if self._server is not None:
            # wait_closed() can hang on streams a client keeps open; bounded.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class RunningEmulator:
    """An :class:`Emulator` serving from a background thread of this process (see :func:`serve`)."""

    def __init__(self, options: EmulatorOptions) -> None:
        self.emulator = Emulator(options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="modal-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def ca_file(self) -> Path:
        return self.emulator.ca_file

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.emulator.start(), self._loop).result(60)

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats_snapshot()

    def reset_stats(self) -> None:
        self.emulator.stats.reset()
        self.emulator.chaos.reset()

    def end_sandbox(self, sandbox_id: str, how: str = "terminated") -> None:
        """As :meth:`EmulatorProcess.end_sandbox`."""
        coro = self.emulator.end_sandbox(sandbox_id, how)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@contextlib.contextmanager
def serve(options: EmulatorOptions | None = None, **kwargs: Any) -> Iterator[RunningEmulator]:
    """Run an emulator in this process for the duration of the ``with`` block.

    ``serve(latency_ms=80)`` is short for ``serve(EmulatorOptions(latency_ms=80))``.  On exit
    every sandbox it started is terminated.
    """
    running = RunningEmulator(options or EmulatorOptions(**kwargs))
    running.start()
    try:
        yield running
    finally:
        running.stop()
