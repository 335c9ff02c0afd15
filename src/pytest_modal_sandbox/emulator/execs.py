"""One ``sandbox.exec(...)``: a process joined to the sandbox, with buffered stdio.

The runtime gives the host argv (``nsenter`` into the sandbox's namespaces) and environment;
this module spawns it with the runtime's ``spawn_exec`` (the walls the sandbox's own processes
have: no_new_privs, the seccomp filter, a fresh keyring), drives its pipes with asyncio, keeps
stdout/stderr whole for offset reads, feeds stdin by
offset (retried writes are dropped), holds the sandbox's activity while the process runs (so
``idle_timeout`` does not fire under a running exec), and kills it on timeout with the
runtime's ``kill_exec`` (the members of its process group first, the nsenter leader last: a
plain ``killpg`` would orphan nsenter's child inside the sandbox to the host's init).  A missing
binary is an exit code (127, from nsenter), never an RPC error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any

from ..runtime import kill_exec, spawn_exec
from .rpc_error import RpcError
from .stdio import OutputBuffer

# The client enforces an exec's timeout itself (wait() returns -1 at its deadline); the process
# is killed this much later, so the client's -1 wins the race as it does against Modal.
KILL_GRACE = 1.0


class ExecProcess:
    """A running or finished exec, addressed by the client's ``exec_id``."""

    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.stdout = OutputBuffer()
        self.stderr = OutputBuffer()
        self.started_at = time.time()
        self.returncode: int | None = None  # asyncio convention: -N = killed by signal N
        self.exited_at: float | None = None
        self.exited = asyncio.Event()
        self.stdin_written = 0
        self.stdin_closed = False
        self._proc: _Process | None = None
        self._stdin_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_stdin: Callable[[], None] = lambda: None
        self._killer: threading.Thread | None = None

    async def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdout: bool,
        stderr: bool,
        merge_stderr: bool,
        timeout: float | None,
        activity: AbstractContextManager[None],
        on_stdin: Callable[[], None],
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Spawn the process; output and exit are collected in the background."""
        self._on_stdin = on_stdin
        activity.__enter__()
        try:
            proc = await _Process.start(
                argv,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=(
                    subprocess.STDOUT
                    if merge_stderr and stdout
                    else subprocess.PIPE
                    if stderr
                    else subprocess.DEVNULL
                ),
                start_new_session=True,  # its group holds the child inside the namespaces
                pass_fds=tuple(pass_fds),
            )
        except BaseException:
            activity.__exit__(None, None, None)
            raise
        self._proc = proc
        if proc.stdout is not None:
            self._tasks.append(asyncio.create_task(_pump(proc.stdout, self.stdout)))
        else:
            self.stdout.close()
        if proc.stderr is not None:
            self._tasks.append(asyncio.create_task(_pump(proc.stderr, self.stderr)))
        else:
            self.stderr.close()
        self._tasks.append(asyncio.create_task(self._reap(activity, timeout)))

    async def _reap(self, activity: AbstractContextManager[None], timeout: float | None) -> None:
        assert self._proc is not None
        try:
            if timeout is not None and timeout > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout + KILL_GRACE)
                except asyncio.TimeoutError:
                    self.kill()
            self.returncode = await self._proc.wait()
        finally:
            activity.__exit__(None, None, None)
            self.stdin_closed = True
            self.exited_at = time.time()
            self.exited.set()

    def abandon(self) -> None:
        """The process never started: end its streams and release waiters (status unknown)."""
        self.stdout.close()
        self.stderr.close()
        self.stdin_closed = True
        self.exited_at = time.time()
        self.exited.set()

    def kill(self) -> None:
        """SIGKILL the exec's process group, nsenter last (idempotent, returns at once: the
        runtime's ``kill_exec`` runs on a helper thread, as it waits for nsenter to reap)."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._killer is not None:
            return
        self._killer = threading.Thread(
            target=kill_exec, args=(proc.pid,), name=f"emulator-kill-{proc.pid}", daemon=True
        )
        self._killer.start()

    def exit_status(self) -> tuple[str, int] | None:
        """``("code", n)`` or ``("signal", n)`` once exited, else None (Modal's oneof)."""
        if self.returncode is None:
            return None
        if self.returncode < 0:
            return ("signal", -self.returncode)
        return ("code", self.returncode)

    async def write_stdin(self, offset: int, data: bytes, eof: bool) -> None:
        """Write ``data`` placed at byte ``offset`` of the stdin stream; duplicates are dropped."""
        async with self._stdin_lock:
            if offset > self.stdin_written:
                raise RpcError(
                    "INVALID_ARGUMENT",
                    f"stdin write at offset {offset} leaves a gap: only "
                    f"{self.stdin_written} bytes were written so far",
                )
            fresh = data[self.stdin_written - offset :]
            if fresh or eof:
                self._on_stdin()
            if fresh:
                if self.stdin_closed:
                    raise RpcError("FAILED_PRECONDITION", "stdin of this exec is closed")
                await self._send(fresh)
                self.stdin_written += len(fresh)
            if eof and not self.stdin_closed:
                self.stdin_closed = True
                await self._close_stdin()

    async def _send(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise RpcError("FAILED_PRECONDITION", "the process has exited; stdin is closed")
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.stdin_closed = True
            raise RpcError(
                "FAILED_PRECONDITION", "the process closed its stdin (it may have exited)"
            ) from exc

    async def _close_stdin(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.close()
                await proc.stdin.wait_closed()

    async def aclose(self) -> None:
        """Kill the process if still running and wait for the background tasks."""
        self.kill()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._killer is not None:
            await asyncio.to_thread(self._killer.join)


class _Process:
    """A process started by ``spawn_exec`` with its pipes on this event loop (what
    ``asyncio.create_subprocess_exec`` gives, which cannot spawn from another thread)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @classmethod
    async def start(cls, argv: Sequence[str], **kwargs: Any) -> _Process:
        loop = asyncio.get_running_loop()
        popen = await loop.run_in_executor(None, lambda: spawn_exec(argv, **kwargs))
        proc = cls(popen)
        try:
            proc.stdout = await proc._reader(popen.stdout)
            proc.stderr = await proc._reader(popen.stderr)
            if popen.stdin is not None:
                transport, protocol = await loop.connect_write_pipe(
                    lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), popen.stdin
                )
                proc.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
            pidfd = os.pidfd_open(popen.pid)
        except BaseException:
            popen.kill()
            await loop.run_in_executor(None, popen.wait)
            raise
        loop.add_reader(pidfd, proc._on_exit, pidfd)
        return proc

    async def _reader(self, pipe: IO[bytes] | None) -> asyncio.StreamReader | None:
        if pipe is None:
            return None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader

    def _on_exit(self, pidfd: int) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        self.popen.wait()  # exited: returns at once
        if not self._exited.done():
            self._exited.set_result(self.popen.returncode)

    async def wait(self) -> int:
        return int(await asyncio.shield(self._exited))


async def _pump(reader: asyncio.StreamReader, buffer: OutputBuffer) -> None:
    try:
        while chunk := await reader.read(64 * 1024):
            buffer.append(chunk)
    finally:
        buffer.close()
