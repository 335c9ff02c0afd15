"""One ``sandbox.exec(...)``: a process joined to the sandbox, with buffered stdio.

The runtime gives the host argv (``nsenter`` into the sandbox's namespaces) and environment;
this module spawns it with the runtime's ``spawn_exec`` (the walls the sandbox's own processes
have: no_new_privs, the seccomp filter, a fresh keyring), drives its pipes with asyncio, keeps
stdout/stderr whole for offset reads, feeds stdin by
offset (retried writes are dropped), holds the sandbox's activity while the process runs (so
``idle_timeout`` does not fire under a running exec), and kills it on timeout with the
runtime's ``kill_exec`` (the members of its process group first, the nsenter leader last: a
plain ``killpg`` would orphan nsenter's child inside the sandbox to the host's init).  A missing
binary is an exit code (127, from nsenter), never an RPC error.  With a :class:`~.ptys.Pty`
the process runs on a terminal instead of pipes (stdout and stderr are then one stream).
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
from . import ptys
from .rpc_error import RpcError
from .stdio import OutputBuffer, unwritten

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
        self._master: int | None = None  # the pty master, when on a terminal

    async def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdout: bool,
        stderr: bool,
        timeout: float | None,
        activity: AbstractContextManager[None],
        on_stdin: Callable[[], None],
        pass_fds: Sequence[int] = (),
        pty: ptys.Pty | None = None,
    ) -> None:
        """Spawn the process; output and exit are collected in the background.  With ``pty``
        it runs on that terminal (whose terminal end is closed here once it is spawned)."""
        self._on_stdin = on_stdin
        activity.__enter__()
        try:
            if pty is None:
                proc = await _Process.start(
                    argv,
                    env=dict(env),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                    stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
                    start_new_session=True,  # its group holds the child inside the namespaces
                    pass_fds=tuple(pass_fds),
                )
            else:
                try:
                    proc = await _Process.start(
                        argv,
                        env=dict(env),
                        stdin=pty.terminal,
                        stdout=pty.terminal,
                        stderr=pty.terminal,
                        start_new_session=True,
                        pass_fds=tuple(pass_fds),
                        preexec_fn=ptys.make_controlling,
                    )
                finally:
                    os.close(pty.terminal)
        except BaseException:
            activity.__exit__(None, None, None)
            if pty is not None:
                ptys.close(pty.master)
            raise
        self._proc = proc
        if pty is not None:
            self._master = pty.master
            self._tasks.append(asyncio.create_task(self._pump_terminal(pty.master)))
            self.stderr.close()
        elif proc.stdout is not None:
            self._tasks.append(asyncio.create_task(_pump(proc.stdout, self.stdout)))
        else:
            self.stdout.close()
        if proc.stderr is not None:
            self._tasks.append(asyncio.create_task(_pump(proc.stderr, self.stderr)))
        else:
            self.stderr.close()
        self._tasks.append(asyncio.create_task(self._reap(activity, timeout)))

    async def _pump_terminal(self, master: int) -> None:
        try:
            await ptys.pump(master, self.stdout)
        finally:
            self._master = None
            ptys.close(master)

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
            fresh = unwritten(data, offset, self.stdin_written)
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
        if proc is not None and proc.returncode is None and self._master is not None:
            try:
                await ptys.write(self._master, data)
            except OSError as exc:
                raise RpcError("FAILED_PRECONDITION", f"the terminal is gone: {exc}") from exc
            return
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
        if self._master is not None:  # a terminal's input ends with its EOF character
            with contextlib.suppress(OSError):
                await ptys.write(self._master, ptys.EOF_CHAR)
            return
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
