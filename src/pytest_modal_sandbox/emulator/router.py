"""The ``TaskCommandRouter`` service: exec, stdio, stdin and readiness of running sandboxes.

On Modal this runs on the worker next to the container; here it shares the control plane's
port (the client accepts an ``http://`` router URL when the control plane is on localhost).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from modal_proto import task_command_router_grpc
from modal_proto import task_command_router_pb2 as tcr

from .. import errors
from .records import EmuSandbox
from .rpc_error import RpcError
from .sandboxes import SandboxManager
from .servicer import fill_unimplemented
from .snapshots import MEMORY_REFUSED, Snapshots
from .stdio import follow_file

Stream = Any  # grpclib.server.Stream[Request, Response]


@fill_unimplemented
class Router(task_command_router_grpc.TaskCommandRouterBase):
    """Modal's task command router, backed by a :class:`SandboxManager`."""

    def __init__(self, sandboxes: SandboxManager, snapshots: Snapshots | None = None) -> None:
        self.sandboxes = sandboxes
        self.snapshots = snapshots or Snapshots(sandboxes, sandboxes.images)

    # -- filesystem snapshots (snapshots.py) -------------------------------------------------
    async def TaskSnapshotFilesystem(self, stream: Stream) -> None:
        req = await stream.recv_message()
        if req.container_id:
            raise RpcError("INVALID_ARGUMENT", "the emulator's sandboxes have no sidecars")
        image_id = await self.snapshots.of_task(req.task_id, req.ttl_seconds)
        await stream.send_message(tcr.TaskSnapshotFilesystemResponse(image_id=image_id))

    async def TaskSnapshotMemory(self, stream: Stream) -> None:
        await stream.recv_message()
        raise RpcError("FAILED_PRECONDITION", MEMORY_REFUSED)

    # -- exec --------------------------------------------------------------------------------
    async def TaskExecStart(self, stream: Stream) -> None:
        req = await stream.recv_message()
        await self.sandboxes.exec_start(req)
        await stream.send_message(tcr.TaskExecStartResponse())

    async def TaskExecStdioRead(self, stream: Stream) -> None:
        req = await stream.recv_message()
        proc = self.sandboxes.exec_process(req.task_id, req.exec_id)
        if req.file_descriptor == tcr.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR:
            buffer = proc.stderr
        else:
            buffer = proc.stdout
        async for chunk in buffer.read_from(req.offset):
            await stream.send_message(tcr.TaskExecStdioReadResponse(data=chunk))

    async def TaskExecStdinWrite(self, stream: Stream) -> None:
        req = await stream.recv_message()
        proc = self.sandboxes.exec_process(req.task_id, req.exec_id)
        await proc.write_stdin(req.offset, req.data, req.eof)
        await stream.send_message(tcr.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream: Stream) -> None:
        """Client streaming: ``start{offset}``, ``data``..., ``end`` (= EOF)."""
        first = await stream.recv_message()
        if first is None or first.WhichOneof("payload") != "start":
            raise RpcError("INVALID_ARGUMENT", "the stdin stream must begin with 'start'")
        proc = self.sandboxes.exec_process(first.start.task_id, first.start.exec_id)
        offset = first.start.offset
        async for msg in stream:
            kind = msg.WhichOneof("payload")
            if kind == "data":
                await proc.write_stdin(offset, msg.data, False)
                offset += len(msg.data)
            elif kind == "end":
                await proc.write_stdin(offset, b"", True)
                break
        await stream.send_message(tcr.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream) -> None:
        req = await stream.recv_message()
        proc = self.sandboxes.exec_process(req.task_id, req.exec_id)
        await stream.send_message(
            tcr.TaskExecStdinStatusResponse(
                num_bytes_written=proc.stdin_written, closed=proc.stdin_closed
            )
        )

    async def TaskExecWait(self, stream: Stream) -> None:
        req = await stream.recv_message()
        proc = self.sandboxes.exec_process(req.task_id, req.exec_id)
        await proc.exited.wait()
        status = proc.exit_status()
        if status is None:
            raise RpcError("NOT_FOUND", f"exec {req.exec_id!r} failed to start")
        await stream.send_message(tcr.TaskExecWaitResponse(**{status[0]: status[1]}))

    async def TaskExecPoll(self, stream: Stream) -> None:
        req = await stream.recv_message()
        proc = self.sandboxes.exec_process(req.task_id, req.exec_id)
        status = proc.exit_status()
        resp = tcr.TaskExecPollResponse()
        if status is not None:
            setattr(resp, status[0], status[1])
        await stream.send_message(resp)

    # -- entrypoint stdio --------------------------------------------------------------------
    async def SandboxStdioReadV2(self, stream: Stream) -> None:
        """The entrypoint's output from ``offset``; ends at EOF, also after the sandbox ended."""
        req = await stream.recv_message()
        sb = self.sandboxes.by_task(req.task_id)
        local = await self.sandboxes.started(sb)
        if local is None:
            return  # it ended before its container started: no output
        stderr = req.file_descriptor == tcr.SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR
        offset = max(0, req.offset)
        if sb.entrypoint is not None:  # create(pty=True): its terminal's output
            buffer = sb.entrypoint.stderr if stderr else sb.entrypoint.stdout
            async for chunk in buffer.read_from(offset):
                await stream.send_message(
                    tcr.SandboxStdioReadV2Response(data=chunk, starting_offset=offset)
                )
                offset += len(chunk)
            return
        path = local.stderr_path if stderr else local.stdout_path
        async for chunk in follow_file(path, offset, lambda: not sb.running):
            await stream.send_message(
                tcr.SandboxStdioReadV2Response(data=chunk, starting_offset=offset)
            )
            offset += len(chunk)

    async def SandboxStdinWriteV2(self, stream: Stream) -> None:
        req = await stream.recv_message()
        sb = self.sandboxes.by_task(req.task_id)
        await self.sandboxes.write_stdin(sb, req.offset, req.data, req.eof)
        await stream.send_message(tcr.SandboxStdinWriteV2Response())

    # -- volumes -----------------------------------------------------------------------------
    async def TaskReloadVolumes(self, stream: Stream) -> None:
        """``sb.reload_volumes()``: commit each mounted volume, then show its committed state."""
        req = await stream.recv_message()
        await self.sandboxes.reload_volumes(self.sandboxes.by_task(req.task_id))
        await stream.send_message(tcr.TaskReloadVolumesResponse())

    # -- readiness ---------------------------------------------------------------------------
    async def SandboxWaitUntilReady(self, stream: Stream) -> None:
        """Poll the readiness probe every ``interval_ms`` until it passes or ``timeout``."""
        req = await stream.recv_message()
        sb = self.sandboxes.by_task(req.task_id)
        ready_at = sb.ready_at
        if ready_at is None:
            ready_at = await self._wait_ready(sb, req.timeout)
        await stream.send_message(tcr.SandboxWaitUntilReadyTcrResponse(ready_at=ready_at))

    async def _wait_ready(self, sb: EmuSandbox, timeout: float) -> float:
        """The probe's verdict within ``timeout``, which includes waiting for the container
        to start (``--start-latency-ms``), as on Modal."""
        deadline = time.monotonic() + max(timeout, 0.0)
        probe = sb.probe
        if probe is None:
            raise RpcError(  # Modal's words (its client's tests), then the fix
                "FAILED_PRECONDITION",
                "Sandbox does not have a readiness probe configured: pass readiness_probe="
                "modal.Probe.with_tcp(port) or modal.Probe.with_exec(...) to Sandbox.create",
            )
        interval = (probe.interval_ms if probe.HasField("interval_ms") else 100) / 1000
        try:
            await asyncio.wait_for(self.sandboxes.started(sb), max(timeout, 0.0))
        except asyncio.TimeoutError:
            raise RpcError("DEADLINE_EXCEEDED", "Sandbox did not become ready in time") from None
        while True:
            if not sb.running:
                raise RpcError(
                    "FAILED_PRECONDITION",
                    f"Sandbox finished before it became ready ({sb.describe_end()})",
                )
            remaining = deadline - time.monotonic()
            if await self._probe_passes(sb, probe, remaining):
                sb.ready_at = ready_at = time.time()
                return ready_at
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError("DEADLINE_EXCEEDED", "Sandbox did not become ready in time")
            await asyncio.sleep(min(interval, remaining))

    async def _probe_passes(self, sb: EmuSandbox, probe: Any, remaining: float) -> bool:
        kind = probe.WhichOneof("probe_oneof")
        if kind == "tcp_port":
            try:  # read from the host: no tool needed in the image
                ports = await self.sandboxes.blocking(sb.local.listening_ports)
            except errors.SandboxGone:
                return False  # the loop reports how it ended
            return probe.tcp_port in ports
        if kind == "exec_command":
            try:
                outcome = await self.sandboxes.blocking(
                    sb.local.exec, list(probe.exec_command.argv), timeout=max(remaining, 1.0)
                )
            except errors.SandboxGone:
                return False
            return bool(outcome.returncode == 0)
        raise RpcError("INVALID_ARGUMENT", f"unsupported readiness probe {kind!r}")
