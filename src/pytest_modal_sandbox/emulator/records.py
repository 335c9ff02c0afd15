"""Modal's view of one sandbox (:class:`EmuSandbox`) and how its end is reported."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Literal

from modal_proto import api_pb2

from ..runtime import ExitStatus, LocalSandbox
from .early_tunnels import EarlyTunnel
from .execs import ExecProcess
from .logs import STDERR, STDOUT, EntrypointLog
from .rpc_error import RpcError
from .stdio import read_at
from .volumes import WorkingCopy

IdleStatus = Literal["timeout", "terminated", "idle_timeout"]
_R = api_pb2.GenericResult


def result_for(status: ExitStatus, idle_status: IdleStatus = "timeout") -> api_pb2.GenericResult:
    """Modal's ``GenericResult`` for how a local sandbox ended.

    The client derives ``returncode`` from it: TIMEOUT -> 124 (and ``wait()`` raises
    ``SandboxTimeoutError``), TERMINATED -> 137, otherwise ``exitcode``.  How Modal reports an
    idle timeout is not documented; ``idle_status`` picks TIMEOUT (default), TERMINATED or
    IDLE_TIMEOUT (no exception, returncode 124 here).
    """
    kind = status.kind
    if kind == "idle_timeout":
        kind = "timeout" if idle_status == "timeout" else idle_status
        if kind == "idle_timeout":
            return _R(
                status=_R.GENERIC_STATUS_IDLE_TIMEOUT,
                exitcode=124,
                exception="Sandbox was idle for longer than its idle_timeout",
            )
        if kind == "terminated":
            return _R(
                status=_R.GENERIC_STATUS_TERMINATED,
                exitcode=137,
                exception="Sandbox was terminated after its idle_timeout",
            )
        return _R(
            status=_R.GENERIC_STATUS_TIMEOUT,
            exitcode=124,
            exception="Sandbox was idle for longer than its idle_timeout",
        )
    if kind == "success":
        return _R(status=_R.GENERIC_STATUS_SUCCESS, exitcode=status.exitcode or 0)
    if kind == "failure":
        code = 1 if status.exitcode is None else status.exitcode
        return _R(status=_R.GENERIC_STATUS_FAILURE, exitcode=code)
    if kind == "terminated":
        return _R(
            status=_R.GENERIC_STATUS_TERMINATED, exitcode=137, exception="Sandbox was terminated"
        )
    return _R(
        status=_R.GENERIC_STATUS_TIMEOUT, exitcode=124, exception="Sandbox exceeded its timeout"
    )


@dataclass(eq=False)
class EmuSandbox:
    """Modal's view of one sandbox.

    ``container`` is the runtime sandbox, set once it runs: at create, or under a start
    latency ``--start-latency-ms`` later (``started`` is set then).  ``tunnels`` are all the
    tunnel endpoints; ``create_tunnels`` those the create response carries (Modal does not
    know a not-yet-running container's unencrypted endpoints at create).
    """

    id: str
    task_id: str
    app_id: str
    environment: str
    name: str | None
    tags: dict[str, str]
    created_at: float
    image_id: str
    timeout_secs: int
    idle_timeout_secs: int | None
    probe: api_pb2.Probe | None
    container: LocalSandbox | None = None
    started_at: float | None = None
    tunnels: list[api_pb2.TunnelData] = field(default_factory=list)
    create_tunnels: list[api_pb2.TunnelData] = field(default_factory=list)
    early_tunnels: list[EarlyTunnel] = field(default_factory=list)
    result: api_pb2.GenericResult | None = None
    finished_at: float | None = None
    ready_at: float | None = None
    execs: dict[str, ExecProcess] = field(default_factory=dict)
    stdin_written: int = 0
    stdin_closed: bool = False
    v1_stdin_index: int = 0  # last SandboxStdinWrite index applied (V1 writes by index)
    hold: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # image in use
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    log: EntrypointLog = field(default_factory=EntrypointLog)
    # The command when it starts after the container's setup (volumes mounted, a terminal):
    # the container sleeps and this runs in it; ``entrypoint`` once it was started.
    late_entrypoint: list[str] | None = None
    pty_info: api_pb2.PTYInfo | None = None  # create(pty=True): the entrypoint's terminal
    entrypoint: ExecProcess | None = None
    volume_mounts: list[api_pb2.VolumeMount] = field(default_factory=list)
    volumes: list[WorkingCopy] = field(default_factory=list)  # mounted, once the container runs

    @property
    def running(self) -> bool:
        return self.result is None

    @property
    def local(self) -> LocalSandbox:
        """The running container; callers wait for it first (``SandboxManager.started``)."""
        if self.container is None:
            raise RpcError("UNAVAILABLE", f"the container of sandbox {self.id} has not started")
        return self.container

    def collect_log(self, *, final: bool = False) -> None:
        """Stamp the entrypoint's new output lines (blocking file reads: a thread, or the end)."""
        if self.entrypoint is not None:  # started late: its output is ours
            out, err = self.entrypoint.stdout, self.entrypoint.stderr
            self.log.collect({STDOUT: out.read, STDERR: err.read}, final=final)
        elif self.container is not None:
            local = self.container
            readers = {
                STDOUT: functools.partial(read_at, local.stdout_path),
                STDERR: functools.partial(read_at, local.stderr_path),
            }
            self.log.collect(readers, final=final)

    def metadata(self) -> api_pb2.SandboxHandleMetadata:
        return api_pb2.SandboxHandleMetadata(app_id=self.app_id, result=self.result)

    def describe_end(self) -> str:
        if self.result is None:
            return "running"
        names = {
            _R.GENERIC_STATUS_SUCCESS: "exited",
            _R.GENERIC_STATUS_FAILURE: "exited",
            _R.GENERIC_STATUS_TERMINATED: "terminated",
            _R.GENERIC_STATUS_TIMEOUT: "timed out",
            _R.GENERIC_STATUS_IDLE_TIMEOUT: "idle timed out",
            _R.GENERIC_STATUS_KERNEL_OOM_KILL: "OOM-killed",
        }
        if self.result.status == _R.GENERIC_STATUS_INTERNAL_FAILURE:
            return self.result.exception or "failed"
        return f"{names.get(self.result.status, 'finished')}, exit code {self.result.exitcode}"

    def info(self) -> api_pb2.SandboxInfo:
        """The ``SandboxInfo`` of ``SandboxListV2``."""
        info = api_pb2.SandboxInfo(
            id=self.id,
            created_at=self.created_at,
            app_id=self.app_id,
            tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in self.tags.items()],
            name=self.name or "",
            image_id=self.image_id,
            timeout_secs=self.timeout_secs,
            tunnels=self.tunnels if self.container is not None else self.create_tunnels,
            metadata=self.metadata(),
            task_info=api_pb2.TaskInfo(
                id=self.task_id,
                sandbox_id=self.id,
                enqueued_at=self.created_at,
                started_at=self.started_at or 0.0,
                finished_at=self.finished_at or 0.0,
                result=self.result,
            ),
        )
        if self.idle_timeout_secs is not None:
            info.idle_timeout_secs = self.idle_timeout_secs
        if self.ready_at is not None:
            info.ready_at = self.ready_at
        if self.probe is not None:
            info.readiness_probe.CopyFrom(self.probe)
        return info
