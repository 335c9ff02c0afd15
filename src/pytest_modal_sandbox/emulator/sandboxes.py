"""The emulator's sandboxes: Modal's sandbox semantics on top of the local runtime.

One :class:`EmuSandbox` per ``SandboxCreateV2``, wrapping a runtime ``LocalSandbox`` with what
Modal adds: an app, a task id, tags and a name unique among the app's *running* sandboxes,
tunnels, the final ``GenericResult``, buffered execs and entrypoint stdin offsets.  The
:class:`SandboxManager` owns them all, runs blocking runtime calls on a thread pool, and learns
about sandboxes that end on their own (entrypoint exit, timeout, idle timeout) with one poller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from modal_proto import api_pb2

from .. import authproxy, errors
from ..runtime import (
    ExitStatus,
    InvalidArgument,
    LocalRuntime,
    LocalSandbox,
    SandboxConfig,
)
from ..spec import parse_cidrs
from . import ids, images, ptys, volume_mounts
from .build_cache import ImageState
from .chaos import Chaos, ChaosOptions
from .early_tunnels import EarlyTunnel
from .execs import ExecProcess
from .mounts import MountStore
from .records import EmuSandbox, IdleStatus, result_for
from .registry import DEFAULT_ENVIRONMENT, Registry
from .rpc_error import RpcError
from .secret_env import merge_env
from .start_mounts import StartMounts
from .stdio import unwritten
from .volumes import BACKGROUND_COMMIT, VolumeStore

T = TypeVar("T")

FS_TOOLS_PATH = "/__modal/.bin/modal-sandbox-fs-tools"
FS_TOOLS_SCRIPT = Path(__file__).with_name("fs_tools.py")
MAX_TIMEOUT_SECS = 24 * 3600
DEFAULT_TIMEOUT_SECS = 300
POLL_INTERVAL = 0.05
EXEC_RETENTION = 600.0  # seconds an exited exec's output stays readable

_R = api_pb2.GenericResult

# How a sandbox can be ended from outside, and what Modal then reports (EmulatorProcess.
# end_sandbox): a terminate from the dashboard or another process, its timeout, and the kernel
# OOM-killing its container (status 10: the client's wait() returns, returncode 137).
OUTSIDE_ENDINGS: Mapping[str, api_pb2.GenericResult] = {
    "terminated": _R(
        status=_R.GENERIC_STATUS_TERMINATED, exitcode=137, exception="Sandbox was terminated"
    ),
    "timeout": _R(
        status=_R.GENERIC_STATUS_TIMEOUT, exitcode=124, exception="Sandbox exceeded its timeout"
    ),
    "oom": _R(
        status=_R.GENERIC_STATUS_KERNEL_OOM_KILL,
        exitcode=137,
        exception="Sandbox was OOM-killed: a process in its container exceeded its memory limit",
    ),
}


def _exec_command(
    local: LocalSandbox, argv: list[str], env: dict[str, str], workdir: str | None
) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """Host argv, env and namespace fds to pass for one exec.

    ``modal-sandbox-fs-tools`` runs ``fs_tools.py`` with the host's interpreter, which enters
    the sandbox's mount namespace only after loading (``LocalSandbox.helper_command``): it
    works in any image, also one with no Python, no shell and no ``cat``.
    """
    if argv[0] == FS_TOOLS_PATH:
        host_argv, fds = local.helper_command(FS_TOOLS_SCRIPT, argv[1:])
        return host_argv, {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, fds
    host_argv, host_env = local.exec_command(argv, env=env, workdir=workdir)
    return host_argv, host_env, {}


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _poll_all(sandboxes: list[EmuSandbox], store: VolumeStore) -> list[ExitStatus | None]:
    """How each sandbox ended (None: running); their new output lines are stamped, and their
    volumes committed every ``BACKGROUND_COMMIT`` seconds (Modal's background commits)."""
    out = []
    now = time.monotonic()
    for sb in sandboxes:
        out.append(sb.local.poll())
        sb.collect_log()
        for wc in list(sb.volumes):
            if now - wc.committed_at >= BACKGROUND_COMMIT:
                try:
                    store.commit(wc)
                except (OSError, RpcError) as exc:
                    print(
                        f"modal emulator: background commit of {wc.mount_path}: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
    return out


def _terminal_env(info: api_pb2.PTYInfo) -> dict[str, str]:
    """The client's terminal settings (``TERM``, ...) for a process on a pty; others' win."""
    env = {"TERM": info.env_term or "xterm"}
    if info.env_colorterm:
        env["COLORTERM"] = info.env_colorterm
    if info.env_term_program:
        env["TERM_PROGRAM"] = info.env_term_program
    return env


def _start_failure(why: str) -> api_pb2.GenericResult:
    """The result of a sandbox whose container could not be started."""
    return api_pb2.GenericResult(
        status=api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE,
        exitcode=1,
        exception=f"the sandbox's container failed to start: {why}",
    )


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``aws`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class SandboxManager:
    """Creates, finds, watches and ends the emulator's sandboxes (one event loop)."""

    def __init__(
        self,
        runtime: LocalRuntime,
        registry: Registry,
        image_store: images.ImageService,
        *,
        tls_contexts: tuple[Any, Any],
        idle_status: IdleStatus = "timeout",
        executor: ThreadPoolExecutor | None = None,
        start_latency: float = 0.0,
        chaos: Chaos | None = None,
        volumes: VolumeStore | None = None,
        mounts: MountStore | None = None,
    ) -> None:
        self.runtime = runtime
        self.start_mounts = StartMounts(mounts or MountStore(), runtime.root / "mounts")
        self.registry = registry
        self.images = image_store
        self._tls, self._tls_h2 = tls_contexts  # (http/1.1 ports, h2_ports)
        self._idle_status: IdleStatus = idle_status
        self._start_latency = start_latency  # seconds from create until the container runs
        self.chaos = chaos or Chaos(ChaosOptions())  # throttling, quota, dedupe counts
        self.volumes = volumes or VolumeStore(runtime.root / "volumes")
        self._executor = executor or ThreadPoolExecutor(64, thread_name_prefix="emulator-rt")
        self._by_id: dict[str, EmuSandbox] = {}
        self._by_task: dict[str, EmuSandbox] = {}
        self._pending_names: set[tuple[str, str]] = set()
        self._creating = 0  # creates admitted and not yet registered (they count as running)
        self._creates: collections.OrderedDict[str, asyncio.Task[EmuSandbox]] = (
            collections.OrderedDict()
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._releases: dict[asyncio.Task[Any], str] = {}  # last commits, by volume id
        self._last_created_at = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    # -- helpers -----------------------------------------------------------------------------
    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking runtime call on the emulator's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def secret_env(self, secret_id: str) -> Mapping[str, str]:
        return self.registry.secret_env(secret_id)

    def _unique_created_at(self) -> float:
        # Pagination is by strict "created_at < before": two sandboxes must never share one.
        now = time.time()
        if now <= self._last_created_at:
            now = self._last_created_at + 1e-6
        self._last_created_at = now
        return now

    # -- lookups -----------------------------------------------------------------------------
    def get(self, sandbox_id: str) -> EmuSandbox:
        sb = self._by_id.get(sandbox_id)
        if sb is None:
            raise RpcError("NOT_FOUND", f"Sandbox {sandbox_id!r} not found")
        return sb

    def by_task(self, task_id: str) -> EmuSandbox:
        sb = self._by_task.get(task_id)
        if sb is None:
            raise RpcError("NOT_FOUND", f"Task {task_id!r} not found")
        return sb

    def running_task(self, task_id: str) -> EmuSandbox:
        """The sandbox of ``task_id``; NOT_FOUND once it has finished (the task is gone)."""
        sb = self.by_task(task_id)
        if not sb.running:
            raise RpcError(
                "NOT_FOUND", f"Sandbox {sb.id} has already finished ({sb.describe_end()})"
            )
        return sb

    def all(self) -> list[EmuSandbox]:
        return list(self._by_id.values())

    def name_holder(self, app_id: str, name: str) -> EmuSandbox | None:
        for sb in self._by_id.values():
            if sb.running and sb.app_id == app_id and sb.name == name:
                return sb
        return None

    def by_name(
        self, app_name: str, environment: str, name: str, include_terminated: bool
    ) -> EmuSandbox:
        app = self.registry.app_by_name(app_name, environment)
        not_found = RpcError(
            "NOT_FOUND", f"Sandbox with name {name!r} not found in app {app_name!r}"
        )
        if app is None:
            raise not_found
        holder = self.name_holder(app.id, name)
        if holder is not None:
            return holder
        if include_terminated:
            ended = [s for s in self._by_id.values() if s.app_id == app.id and s.name == name]
            if ended:
                return max(ended, key=lambda s: s.finished_at or 0.0)
        raise not_found

    def query(
        self,
        *,
        app_id: str,
        environment: str,
        tags: Mapping[str, str],
        before: float,
        include_finished: bool,
        limit: int,
    ) -> list[EmuSandbox]:
        """Newest first, ``created_at < before`` when ``before`` is set, tags AND-matched."""
        env = environment or DEFAULT_ENVIRONMENT
        out = []
        for sb in sorted(self._by_id.values(), key=lambda s: s.created_at, reverse=True):
            if before and not sb.created_at < before:
                continue
            if app_id and sb.app_id != app_id:
                continue
            if not app_id and sb.environment != env:
                continue
            if not include_finished and not sb.running:
                continue
            if any(sb.tags.get(k) != v for k, v in tags.items()):
                continue
            out.append(sb)
            if len(out) >= limit:
                break
        return out

    # -- create ------------------------------------------------------------------------------
    async def create(
        self, req: api_pb2.SandboxCreateV2Request, idempotency_key: str | None
    ) -> EmuSandbox:
        """Create a sandbox; a retried request (same idempotency key) gets the same one.

        The work runs in its own task: a client that gives up mid-create (deadline, dropped
        connection) cancels only its wait, never a half-made sandbox, which is registered
        like any other (as on Modal, where a lost response does not undo a create).
        """
        if idempotency_key:
            existing = self._creates.get(idempotency_key)
            if existing is not None:
                self.chaos.deduplicated("create")
                return await asyncio.shield(existing)
        if self._closing:
            raise RpcError("UNAVAILABLE", "the emulator is shutting down")
        running = sum(1 for sb in self._by_id.values() if sb.running)
        self.chaos.admit_create(running=running + self._creating)
        self._creating += 1
        task = self._detached(self._admitted(req))
        if idempotency_key:
            self._creates[idempotency_key] = task
            while len(self._creates) > 4096:
                self._creates.popitem(last=False)

            def forget_failure(t: asyncio.Task[EmuSandbox]) -> None:
                failed = t.cancelled() or t.exception() is not None
                if failed and self._creates.get(idempotency_key) is t:
                    del self._creates[idempotency_key]  # a retry may try again

            task.add_done_callback(forget_failure)
        return await asyncio.shield(task)

    async def _admitted(self, req: api_pb2.SandboxCreateV2Request) -> EmuSandbox:
        """A create the quota admitted: it counts against the quota until it is registered (or
        failed), so creates sent at once cannot all take the last slot."""
        try:
            return await self._create(req)
        finally:
            self._creating -= 1

    def _detached(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` to completion even if the RPC that started it is cancelled."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_retrieve)  # the RPC that awaited it may be gone
        return task

    def _volume_mounts(self, d: api_pb2.Sandbox) -> list[api_pb2.VolumeMount]:
        """The sandbox's volume mounts, checked: known volumes, distinct absolute paths."""
        mounts = list(d.volume_mounts)
        paths = [m.mount_path for m in mounts]
        for mount in mounts:
            self.volumes.get(mount.volume_id)  # NOT_FOUND for an unknown (or deleted) volume
            path = mount.mount_path
            if not path.startswith("/") or path.rstrip("/") == "" or ".." in path.split("/"):
                raise RpcError(
                    "INVALID_ARGUMENT", f"volume mount path {path!r} must be absolute, not /"
                )
        if len(set(paths)) != len(paths):
            raise RpcError("INVALID_ARGUMENT", f"a volume mount path is used twice: {paths}")
        return mounts

    def _config(
        self,
        req: api_pb2.SandboxCreateV2Request,
        app_id: str,
        image: ImageState,
        mounts: Mapping[str, str],
    ) -> tuple[SandboxConfig, str | None, list[api_pb2.PortSpec]]:
        """The runtime's config, the sandbox's name, its port specs.

        The image gives the root, its env (under the sandbox's ``env``/secrets) and its
        workdir (unless the sandbox sets one).

        The name is not given to the runtime: uniqueness among *running* sandboxes is decided
        here, at once, while the runtime would still count a just-terminated sandbox whose
        keeper is exiting (a create right after ``terminate()`` would spuriously collide).
        """
        d = req.definition
        name = d.name if d.HasField("name") else None
        if name is not None and not ids.OBJECT_NAME.match(name):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"invalid Sandbox name {name!r}: 1-64 letters, digits, '.', '-' or '_'",
            )
        timeout = d.timeout_secs or DEFAULT_TIMEOUT_SECS
        if not 0 < timeout <= MAX_TIMEOUT_SECS:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"timeout={timeout}s is out of range: it must be between 1 s and 24 hours",
            )
        idle: int | None = d.idle_timeout_secs if d.HasField("idle_timeout_secs") else None
        if idle is not None and not 0 < idle <= MAX_TIMEOUT_SECS:
            raise RpcError(
                "INVALID_ARGUMENT",
                f"idle_timeout={idle}s is out of range: it must be between 1 s and 24 hours",
            )
        ports = list(d.open_ports.ports)
        numbers = [p.port for p in ports]
        if len(set(numbers)) != len(numbers):
            raise RpcError("INVALID_ARGUMENT", f"a port is opened twice: {numbers}")
        env = dict(image.env)
        env.update(d.environment_variables.contents)
        env.update(
            merge_env(
                req.secret_sources,
                secret_ids=d.secret_ids,
                legacy_env=req.ephemeral_secrets.contents,
                secrets=self,
            )
        )
        block, allowlist = _network_access(d)
        config = SandboxConfig(
            command=list(d.entrypoint_args) or None,
            env=env,
            workdir=d.workdir if d.HasField("workdir") else image.workdir,
            timeout=float(timeout),
            idle_timeout=None if idle is None else float(idle),
            ports=numbers,
            app=app_id,
            tags={t.tag_name: t.tag_value for t in req.tags},
            stdin_pipe=True,
            rootfs=None if image.rootfs is None else str(image.rootfs),
            block_network=block,
            cidr_allowlist=allowlist,
            layers=image.layers,
            mounts=mounts,
        )
        return config, name, ports

    async def _create(self, req: api_pb2.SandboxCreateV2Request) -> EmuSandbox:
        app_id = req.app_id
        if not app_id:
            raise RpcError("INVALID_ARGUMENT", "SandboxCreateV2 needs an app_id")
        app = self.registry.app_by_id(app_id)  # stale ids (emulator restarted) are accepted
        environment = app.environment if app is not None else DEFAULT_ENVIRONMENT
        image = await self.images.state_for(req.definition.image_id)
        mounts = await self.blocking(self.start_mounts.config, list(req.definition.mount_ids))
        try:
            config, name, ports = self._config(req, app_id, image, mounts)
        except errors.SpecError as exc:
            raise RpcError("INVALID_ARGUMENT", str(exc)) from exc
        volume_mounts = self._volume_mounts(req.definition)
        pty = req.definition.HasField("pty_info")
        late = None
        if (pty or volume_mounts) and config.command:
            # the container sleeps; its command starts once volumes and terminal are in place,
            # and its exit ends the sandbox
            late = list(config.command)
            config = dataclasses.replace(config, command=None)
        name_key = (app_id, name) if name else None
        if name_key is not None:
            if name_key in self._pending_names or self.name_holder(*name_key) is not None:
                raise RpcError("ALREADY_EXISTS", f"Sandbox with name {name!r} already exists")
            self._pending_names.add(name_key)
        hold = contextlib.ExitStack()  # the image root stays in use while the sandbox lives
        try:
            hold.enter_context(image.use())
            record = functools.partial(
                EmuSandbox,
                task_id=ids.task_id(),
                app_id=app_id,
                environment=environment,
                name=name,
                tags=dict(config.tags),
                image_id=req.definition.image_id,
                timeout_secs=int(config.timeout),
                idle_timeout_secs=None if config.idle_timeout is None else int(config.idle_timeout),
                probe=(
                    req.definition.readiness_probe
                    if req.definition.HasField("readiness_probe")
                    else None
                ),
                hold=hold,
                late_entrypoint=late,
                pty_info=req.definition.pty_info if pty else None,
                volume_mounts=volume_mounts,
            )
            if self._start_latency > 0:
                sb = await self._create_pending(record, config, ports)
            else:
                sb = await self._create_running(record, config, ports)
        except BaseException:
            hold.close()
            raise
        finally:
            if name_key is not None:
                self._pending_names.discard(name_key)
        self._by_id[sb.id] = sb
        self._by_task[sb.task_id] = sb
        self._ensure_poller()
        self._prune_execs()
        return sb

    async def _create_running(
        self,
        record: Callable[..., EmuSandbox],
        config: SandboxConfig,
        ports: list[api_pb2.PortSpec],
    ) -> EmuSandbox:
        """No start latency: the container runs before create answers (tunnels all known)."""
        local = await self._create_local(config)
        sb: EmuSandbox = record(id=local.id, created_at=self._unique_created_at(), container=local)
        sb.started_at = sb.created_at
        sb.started.set()
        try:
            sb.tunnels = sb.create_tunnels = await self._open_tunnels(local, ports)
            await self._set_up(sb, local)
        except BaseException:
            self._release_volumes(sb)
            await self.blocking(local.terminate)
            raise
        return sb

    async def _create_pending(
        self,
        record: Callable[..., EmuSandbox],
        config: SandboxConfig,
        ports: list[api_pb2.PortSpec],
    ) -> EmuSandbox:
        """Under ``--start-latency-ms``: answer at once, start the container that much later.

        As on Modal, the create response carries the task id, the router access and the
        encrypted tunnel endpoints (listeners that relay once the container runs); calls that
        need the container wait for it (exec, stdio, readiness); unencrypted endpoints are
        withheld until ``SandboxGetTunnelsV2``, which waits for the start.
        """
        sb: EmuSandbox = record(id=ids.sandbox_id(), created_at=self._unique_created_at())
        try:
            for spec in ports:
                early = await EarlyTunnel.open()
                sb.early_tunnels.append(early)
                host, port = early.address
                data = api_pb2.TunnelData(host=host, port=port, container_port=spec.port)
                if spec.unencrypted:
                    data.unencrypted_host, data.unencrypted_port = host, port
                sb.tunnels.append(data)
        except BaseException:
            for early in sb.early_tunnels:
                early.close()
            raise
        pairs = zip(sb.tunnels, ports, strict=True)
        sb.create_tunnels = [t for t, spec in pairs if not spec.unencrypted]
        due = asyncio.get_running_loop().time() + self._start_latency
        self._detached(self._start_later(sb, config, ports, due))
        return sb

    async def _start_later(
        self, sb: EmuSandbox, config: SandboxConfig, ports: list[api_pb2.PortSpec], due: float
    ) -> None:
        """Start ``sb``'s container at ``due`` (loop time) unless it was ended before."""
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sb.finished.wait(), delay)
        if not sb.running:
            return  # terminated (or the emulator stopped) before its start
        try:
            local = await self._create_local(dataclasses.replace(config, tags=dict(sb.tags)))
        except RpcError as exc:
            self._end(sb, _start_failure(exc.message), time.time())
            return
        try:
            if not sb.running:  # ended while the runtime was starting it
                await self.blocking(local.terminate)
                return
            opened = await self._open_tunnels(local, ports)
            await self._set_up(sb, local)
        except RpcError as exc:
            await self.blocking(local.terminate)
            self._end(sb, _start_failure(exc.message), time.time())
            return
        except BaseException as exc:
            await self.blocking(local.terminate)
            self._end(sb, _start_failure(f"it could not be set up: {exc}"), time.time())
            raise
        for early, data in zip(sb.early_tunnels, opened, strict=True):
            early.connect_to(data.host, data.port)
        sb.container = local
        sb.started_at = time.time()
        sb.started.set()
        self._ensure_poller()

    async def _set_up(self, sb: EmuSandbox, local: LocalSandbox) -> None:
        """What a container needs before its command runs: volumes, then the command itself
        if it starts late (``Sandbox.create(cmd, pty=True)``, or with volumes)."""
        for index, mount in enumerate(sb.volume_mounts):
            volume = self.volumes.get(mount.volume_id)
            await self.settled(volume.id)
            wc = await self.blocking(
                self.volumes.checkout,
                volume,
                f"{sb.id}-{index}",
                mount.mount_path,
                mount.sub_path,
                mount.read_only,
            )
            sb.volumes.append(wc)
            await self.blocking(volume_mounts.attach, local, wc)
        if sb.late_entrypoint is not None:
            await self._start_late_entrypoint(sb, local, sb.late_entrypoint)

    async def _start_late_entrypoint(
        self, sb: EmuSandbox, local: LocalSandbox, argv: list[str]
    ) -> None:
        """The command runs in the sleeping container (on a terminal with ``pty_info``); its
        stdio is the sandbox's and its exit ends the sandbox with its exit code, as the
        entrypoint's would."""
        env = {} if sb.pty_info is None else _terminal_env(sb.pty_info)
        host_argv, host_env = await self.blocking(local.exec_command, argv, env=env)
        pty = None if sb.pty_info is None else await self._open_pty(local, sb.pty_info)
        proc = ExecProcess("entrypoint")
        await proc.start(
            host_argv,
            host_env,
            stdout=True,
            stderr=True,
            timeout=None,
            activity=contextlib.nullcontext(),  # the entrypoint does not count as activity
            on_stdin=local.touch,
            pty=pty,
        )
        sb.entrypoint = proc
        self._detached(self._end_with_entrypoint(sb, proc))

    async def _end_with_entrypoint(self, sb: EmuSandbox, proc: ExecProcess) -> None:
        await proc.exited.wait()
        if not sb.running or proc.returncode is None:
            return
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        self._finish(sb, ExitStatus("success" if code == 0 else "failure", code, time.time()))
        await self.blocking(sb.local.terminate)

    async def started(self, sb: EmuSandbox) -> LocalSandbox | None:
        """``sb``'s container once it runs (waiting out a start latency); None if ``sb`` ended
        before its container ever started."""
        if sb.container is None and sb.running:
            await _first(sb.started.wait(), sb.finished.wait())
        return sb.container

    async def container(self, sb: EmuSandbox) -> LocalSandbox:
        """Like :meth:`started`, but a sandbox that never started is NOT_FOUND."""
        local = await self.started(sb)
        if local is None:
            raise RpcError(
                "NOT_FOUND",
                f"Sandbox {sb.id} ended before its container started ({sb.describe_end()})",
            )
        return local

    async def _create_local(self, config: SandboxConfig) -> LocalSandbox:
        try:
            return await self.blocking(self.runtime.create, config)
        except errors.SpecError as exc:
            raise RpcError("INVALID_ARGUMENT", str(exc)) from exc
        except errors.BackendUnavailable as exc:
            raise RpcError("FAILED_PRECONDITION", f"cannot run sandboxes here: {exc}") from exc
        except errors.SandboxError as exc:
            raise RpcError(
                "INTERNAL", f"the local runtime failed to start the sandbox: {exc}"
            ) from exc

    async def _open_tunnels(
        self, local: LocalSandbox, ports: Iterable[api_pb2.PortSpec]
    ) -> list[api_pb2.TunnelData]:
        """One loopback listener per port, serving TLS *and* plain on the same port."""
        out = []
        for spec in ports:
            h2 = spec.HasField("tunnel_type") and spec.tunnel_type == api_pb2.TUNNEL_TYPE_H2
            tls = self._tls_h2 if h2 else self._tls
            host, port = await self.blocking(local.tunnel, spec.port, tls=tls)
            data = api_pb2.TunnelData(host=host, port=port, container_port=spec.port)
            if spec.unencrypted:
                data.unencrypted_host = host
                data.unencrypted_port = port
            out.append(data)
        return out

    # -- lifecycle ---------------------------------------------------------------------------
    def _finish(self, sb: EmuSandbox, status: ExitStatus) -> None:
        self._end(sb, result_for(status, self._idle_status), status.finished_at)

    def _end(self, sb: EmuSandbox, result: api_pb2.GenericResult, finished_at: float) -> None:
        if sb.result is not None:
            return
        sb.result = result
        sb.finished_at = finished_at
        sb.stdin_closed = True
        authproxy.proxy().revoke(sb.id)  # its connect tokens end with it
        sb.collect_log(final=True)
        self._release_volumes(sb)
        for early in sb.early_tunnels:
            early.close()
        for proc in [*sb.execs.values(), *([sb.entrypoint] if sb.entrypoint else [])]:
            proc.kill()  # the pid namespace is gone; make sure nsenter is too
        sb.hold.close()
        sb.finished.set()

    def _release_volumes(self, sb: EmuSandbox) -> None:
        """A last (background) commit of each mounted volume; its working copy goes."""
        mounted, sb.volumes = sb.volumes, []
        for wc in mounted:
            task = self._detached(self.blocking(self.volumes.release, wc))
            self._releases[task] = wc.volume.id
            task.add_done_callback(lambda t: self._releases.pop(t, None))

    async def settled(self, volume_id: str) -> None:
        """Once the last commits of sandboxes that ended with ``volume_id`` mounted are in:
        what reads a volume's committed state waits for them (Modal commits before a
        container's end is reported)."""
        pending = [t for t, vid in self._releases.items() if vid == volume_id]
        if pending:
            await asyncio.wait(pending)

    async def commit_volumes(self, sb: EmuSandbox, paths: Iterable[str] = ()) -> None:
        """Commit the volumes mounted at (or above) ``paths``, all without paths (``sync``)."""
        wanted = [os.path.normpath(p) for p in paths]
        for wc in list(sb.volumes):
            root = wc.mount_path.rstrip("/")
            if not wanted or any(p == root or p.startswith(root + "/") for p in wanted):
                await self.blocking(self.volumes.commit, wc)

    async def reload_volumes(self, sb: EmuSandbox) -> None:
        """``sb.reload_volumes()``: commit, then show each volume's committed state."""
        if await self.started(sb) is None or not sb.running:
            raise RpcError("NOT_FOUND", f"Sandbox {sb.id} has already finished")
        for wc in list(sb.volumes):
            await self.blocking(self.volumes.reload, wc)

    def _prune_execs(self) -> None:
        """Forget execs that exited over EXEC_RETENTION ago, so long runs stay small."""
        cutoff = time.time() - EXEC_RETENTION
        for sb in self._by_id.values():
            old = [
                k for k, p in sb.execs.items() if p.exited_at is not None and p.exited_at < cutoff
            ]
            for key in old:
                del sb.execs[key]

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        """Notice sandboxes that ended on their own, every POLL_INTERVAL seconds (a container
        that starts later restarts this loop)."""
        while True:
            running = [sb for sb in self._by_id.values() if sb.running and sb.container]
            if not running:
                return
            statuses = await self.blocking(_poll_all, running, self.volumes)
            for sb, status in zip(running, statuses, strict=True):
                if status is not None:
                    self._finish(sb, status)
            await asyncio.sleep(POLL_INTERVAL)

    async def terminate(self, sb: EmuSandbox) -> api_pb2.GenericResult | None:
        """End ``sb`` (idempotent); returns the result it already had, if it had finished."""
        if sb.result is not None:
            return sb.result
        if sb.container is None:  # not started yet: it never will
            self._finish(sb, ExitStatus("terminated", None, time.time()))
            return None
        status = await self.blocking(sb.local.poll)
        if status is not None:
            self._finish(sb, status)
            return sb.result
        await self.blocking(sb.local.terminate)  # no wait: the client does not wait either
        self._finish(sb, ExitStatus("terminated", None, time.time()))
        return None

    async def end(self, sb: EmuSandbox, how: str) -> None:
        """End ``sb`` as something outside the client would (``OUTSIDE_ENDINGS``, or its idle
        timeout firing, as ``--idle-timeout-status`` reports it)."""
        result = OUTSIDE_ENDINGS.get(how)
        if how == "idle_timeout":  # reported as --idle-timeout-status says
            result = result_for(ExitStatus("idle_timeout", None, time.time()), self._idle_status)
        if result is None:
            choices = ", ".join([*OUTSIDE_ENDINGS, "idle_timeout"])
            raise RpcError(
                "INVALID_ARGUMENT", f"cannot end a sandbox by {how!r}: choose one of {choices}"
            )
        if sb.result is not None:
            return
        if sb.container is not None:
            await self.blocking(sb.container.terminate)
        self._end(sb, result, time.time())

    async def wait(self, sb: EmuSandbox, timeout: float) -> None:
        """Long-poll: return once ``sb`` finished or ``timeout`` seconds passed."""
        if sb.running and timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sb.finished.wait(), timeout)

    async def terminate_all(self) -> None:
        """Refuse new sandboxes, let creates in flight finish, terminate every sandbox.

        Clients blocked on this emulator (``wait()``, exec waits, output streams) get their
        answers (terminated, 137, EOF) before the server goes away.
        """
        self._closing = True
        for sb in list(self._by_id.values()):
            if sb.container is None:  # pending starts: they end here, never start
                self._finish(sb, ExitStatus("terminated", None, time.time()))
        if self._background:
            await asyncio.wait(list(self._background), timeout=30)
        # Every sandbox, also those that ended on their own or were terminated without
        # waiting: wait() returns once its keeper has cleaned up, so nothing outlives us.
        targets = list(self._by_id.values())
        await asyncio.gather(
            *(self.blocking(sb.local.terminate, wait=True) for sb in targets if sb.container),
            return_exceptions=True,
        )
        for sb in targets:
            self._finish(sb, ExitStatus("terminated", None, time.time()))
        if self._releases:  # the last commits of mounted volumes
            await asyncio.wait(list(self._releases), timeout=60)

    async def close(self) -> None:
        """After :meth:`terminate_all`: reap execs, stop the poller, close tunnels and threads."""
        await self.terminate_all()  # idempotent; covers callers that skipped it
        for sb in self._by_id.values():
            for proc in [*sb.execs.values(), *([sb.entrypoint] if sb.entrypoint else [])]:
                await proc.aclose()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.blocking(self.runtime.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- execs -------------------------------------------------------------------------------
    async def exec_start(self, req: Any) -> None:
        """``TaskExecStart``: idempotent by ``exec_id``; the process runs in the background."""
        sb = self.running_task(req.task_id)
        if not req.exec_id:
            raise RpcError("INVALID_ARGUMENT", "TaskExecStart needs an exec_id")
        await self.container(sb)  # under a start latency: once it runs
        if not sb.running:
            raise RpcError(
                "NOT_FOUND", f"Sandbox {sb.id} has already finished ({sb.describe_end()})"
            )
        if req.exec_id in sb.execs:
            self.chaos.deduplicated("exec")
            return
        argv = list(req.command_args)
        if not argv:
            raise RpcError("INVALID_ARGUMENT", "TaskExecStart needs a command")
        if sb.volumes and os.path.basename(argv[0]) == "sync":  # Modal's commit in a sandbox
            await self.commit_volumes(sb, [a for a in argv[1:] if a.startswith("/")])
            if req.exec_id in sb.execs:  # a retry arrived meanwhile
                return
        workdir = req.workdir if req.HasField("workdir") else None
        if workdir is not None and not workdir.startswith("/"):
            raise RpcError("INVALID_ARGUMENT", f"workdir must be absolute, got {workdir!r}")
        env = merge_env(
            req.secret_sources,
            secret_ids=req.secret_ids,
            legacy_env=dict(req.env),
            secrets=self,
        )
        proc = ExecProcess(req.exec_id)
        sb.execs[req.exec_id] = proc  # before any await: concurrent retries see it
        await asyncio.shield(self._detached(self._spawn(sb, proc, req, argv, env, workdir)))

    async def _spawn(
        self,
        sb: EmuSandbox,
        proc: ExecProcess,
        req: Any,
        argv: list[str],
        env: dict[str, str],
        workdir: str | None,
    ) -> None:
        """Start the exec (in its own task: a cancelled RPC must not leave it half-started)."""
        fds: dict[str, int] = {}
        pty_info = req.pty_info if req.HasField("pty_info") else None
        try:
            if pty_info is not None:
                env = {**_terminal_env(pty_info), **env}
            host_argv, host_env, fds = await self.blocking(
                _exec_command, sb.local, argv, env, workdir
            )
            pty = None if pty_info is None else await self._open_pty(sb.local, pty_info)
            pipe = 1  # TASK_EXEC_STDOUT_CONFIG_PIPE == TASK_EXEC_STDERR_CONFIG_PIPE
            await proc.start(
                host_argv,
                host_env,
                stdout=req.stdout_config == pipe,
                stderr=req.stderr_config == pipe,
                timeout=float(req.timeout_secs) if req.HasField("timeout_secs") else None,
                activity=sb.local.activity(),
                on_stdin=sb.local.touch,
                pass_fds=tuple(fds.values()),
                pty=pty,
            )
        except errors.SandboxGone as exc:
            self._abandon(sb, proc)
            raise RpcError("NOT_FOUND", f"Sandbox {sb.id} has finished: {exc}") from exc
        except (InvalidArgument, errors.SpecError) as exc:
            self._abandon(sb, proc)
            raise RpcError("INVALID_ARGUMENT", str(exc)) from exc
        except BaseException:
            self._abandon(sb, proc)
            raise
        finally:
            for fd in fds.values():
                os.close(fd)  # the helper has its own copies now

    async def _open_pty(self, local: LocalSandbox, info: api_pb2.PTYInfo) -> ptys.Pty:
        return await self.blocking(ptys.open_pty, local.init_pid, info.winsz_rows, info.winsz_cols)

    @staticmethod
    def _abandon(sb: EmuSandbox, proc: ExecProcess) -> None:
        """Forget an exec that never started; wake anyone already waiting on it."""
        if sb.execs.get(proc.exec_id) is proc:
            del sb.execs[proc.exec_id]
        proc.abandon()

    def exec_process(self, task_id: str, exec_id: str) -> ExecProcess:
        sb = self.by_task(task_id)
        proc = sb.execs.get(exec_id)
        if proc is None:
            raise RpcError("NOT_FOUND", f"exec {exec_id!r} not found in task {task_id!r}")
        return proc

    # -- entrypoint stdin --------------------------------------------------------------------
    async def write_stdin(self, sb: EmuSandbox, offset: int, data: bytes, eof: bool) -> None:
        """``SandboxStdinWriteV2``: bytes at ``offset`` of the entrypoint's stdin, deduplicated."""
        if await self.started(sb) is None:
            raise RpcError("FAILED_PRECONDITION", "Sandbox has already terminated")
        if sb.entrypoint is not None:  # on a terminal
            if not sb.running:
                raise RpcError("FAILED_PRECONDITION", "Sandbox has already terminated")
            await sb.entrypoint.write_stdin(offset, data, eof)
            sb.local.touch()
            return
        async with sb.stdin_lock:
            if not sb.running:
                raise RpcError("FAILED_PRECONDITION", "Sandbox has already terminated")
            fresh = unwritten(data, offset, sb.stdin_written)
            if not fresh and not eof:
                return
            if sb.stdin_closed:
                if fresh:
                    raise RpcError("FAILED_PRECONDITION", "the sandbox's stdin is closed")
                return
            try:
                await self.blocking(sb.local.write_stdin, fresh, eof=eof)
            except (OSError, errors.SandboxGone) as exc:
                sb.stdin_closed = True
                raise RpcError("FAILED_PRECONDITION", "Sandbox has already terminated") from exc
            except errors.SandboxError as exc:  # e.g. the entrypoint closed its stdin
                sb.stdin_closed = True
                raise RpcError("FAILED_PRECONDITION", str(exc)) from exc
            sb.stdin_written += len(fresh)
            sb.stdin_closed = eof
            sb.local.touch()


def _network_access(d: api_pb2.Sandbox) -> tuple[bool, list[str] | None]:
    """``(block_network, cidr_allowlist)`` from the definition's ``network_access``, as Modal
    applies it (a bad CIDR is the caller's error)."""
    access = d.network_access
    kinds = api_pb2.NetworkAccess.NetworkAccessType
    if not d.HasField("network_access") or access.network_access_type == kinds.OPEN:
        return False, None
    if access.network_access_type == kinds.BLOCKED:
        return True, None
    if access.network_access_type == kinds.ALLOWLIST:
        try:
            parse_cidrs(list(access.allowed_cidrs))
        except ValueError as exc:
            raise RpcError("INVALID_ARGUMENT", f"outbound_cidr_allowlist: {exc}") from None
        return False, list(access.allowed_cidrs)
    raise RpcError("INVALID_ARGUMENT", f"unknown network_access_type {access.network_access_type}")
