"""Tunnels: listeners on 127.0.0.1 in the calling process, forwarding into a sandbox.

One listener per (sandbox, port) per process, on an ephemeral port; the same port is also
listened on at this machine's own address for other sandboxes (``hostaddr.py``: ``peer``).
Each accepted connection gets a fresh socket made inside the sandbox's network namespace
(see ``netns``), connected to 127.0.0.1:port there (or [::1]:port), and bytes are pumped
both ways with half-closes kept.
While at least one connection is open the sandbox counts as active (``idle_timeout``).

With ``tls``, the first byte of each connection decides: 0x16 (a TLS handshake) means TLS is
terminated here with that context, anything else is forwarded as plain bytes, so one port
serves both ``https://`` and ``http://``.  A client that waits for the server to speak first
gets plain forwarding after ``PEEK_TIMEOUT``.

All listeners of a process share one asyncio loop on a daemon thread.  A listener closes when
its sandbox's keeper exits, on ``close()``, or with the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procs
from .activity import ActivityToken
from .hostaddr import bind_pair, from_this_machine
from .netns import Connector, make_connector

if TYPE_CHECKING:
    from .sandbox import LocalSandbox

__all__ = ["PEEK_TIMEOUT", "close_all", "close_under", "open_tunnel"]

PEEK_TIMEOUT = 0.3
BUFFER = 65536


class _Listener:
    def __init__(
        self,
        hub: _Hub,
        key: tuple[str, int],
        port: int,
        connector: Connector,
        tls: ssl.SSLContext | None,
        sandbox: LocalSandbox,
    ) -> None:
        self.hub = hub
        self.key = key
        self.port = port
        self.connector = connector
        self.tls = tls
        self.activity_dir = sandbox.state_dir / "activity"
        self.last_activity = sandbox.state_dir / "last_activity"
        self.keeper = sandbox._keeper
        self.open_connections = 0
        self.token: ActivityToken | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.sock, self.peer_sock = bind_pair()
        self.sock.setblocking(False)
        if self.peer_sock is not None:
            self.peer_sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.pidfd: int | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.pidfd = procs.open_pidfd(self.keeper)
        if self.pidfd is None:  # the sandbox ended already
            self.close()
            return
        loop.add_reader(self.pidfd, self.close)
        self._spawn(self._accept_loop(self.sock))
        if self.peer_sock is not None:
            self._spawn(self._accept_loop(self.peer_sock, local_only=True))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept_loop(self, sock: socket.socket, *, local_only: bool = False) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                if self.closed:
                    return
                await asyncio.sleep(0.05)  # e.g. EMFILE: back off, do not spin
                continue
            if local_only and not from_this_machine(conn):
                conn.close()  # the peer address is for this machine's sandboxes only
                continue
            self._spawn(self._handle(conn))

    def _opened(self) -> None:
        self.open_connections += 1
        if self.open_connections == 1:
            self.token = ActivityToken(self.activity_dir, self.last_activity)

    def _closed(self) -> None:
        self.open_connections -= 1
        if self.open_connections == 0 and self.token is not None:
            self.token.release()
            self.token = None

    async def _handle(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._opened()
        writers: list[asyncio.StreamWriter] = []
        try:
            tls = None
            if self.tls is not None and await _peek(conn, PEEK_TIMEOUT) == b"\x16":
                tls = self.tls
            upstream = await self._connect_upstream()
            if upstream is None:
                conn.close()
                return
            client_r, client_w = await _streams(conn, tls)
            writers.append(client_w)
            up_r, up_w = await asyncio.open_connection(sock=upstream, limit=BUFFER)
            writers.append(up_w)
            await asyncio.gather(_pump(client_r, up_w), _pump(up_r, client_w))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, EOFError):
            pass
        finally:
            for writer in writers:
                writer.close()
            for writer in writers:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if not writers:
                conn.close()
            self._closed()

    async def _connect_upstream(self) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                sock = await asyncio.wrap_future(self.connector.new_socket(family))
            except OSError:
                continue
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, self.port))
                return sock
            except OSError:
                sock.close()
        return None

    def close(self) -> None:
        """Stop listening and drop every connection (runs on the hub's loop)."""
        if self.closed:
            return
        self.closed = True
        loop = asyncio.get_running_loop()
        if self.pidfd is not None:
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        self.sock.close()
        if self.peer_sock is not None:
            self.peer_sock.close()
        for task in list(self.tasks):
            task.cancel()
        if self.token is not None:
            self.token.release()
            self.token = None
        self.hub.forget(self)
        loop.run_in_executor(None, self.connector.close)


async def _peek(conn: socket.socket, timeout: float) -> bytes:
    """The first byte the client sent, without consuming it (b"" if it sent nothing yet)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await asyncio.wait_for(readable, timeout)
    except asyncio.TimeoutError:
        return b""
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return b""


async def _streams(
    sock: socket.socket, tls: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=BUFFER)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=tls, ssl_handshake_timeout=30.0 if tls else None
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(BUFFER)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof() and not writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()  # half-close: the other side may still answer
        else:
            writer.close()


class _Hub:
    """This process's tunnel listeners and the loop thread that serves them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="pms-tunnels", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[[], None]) -> None:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
                future.set_result(None)
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        future.result(30)

    def forget(self, listener: _Listener) -> None:
        with self.lock:
            if self.listeners.get(listener.key) is listener:
                del self.listeners[listener.key]


_hub: _Hub | None = None
_hub_lock = threading.Lock()


def _get_hub() -> _Hub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = _Hub()
        return _hub


def open_tunnel(
    sandbox: LocalSandbox, init: procs.ProcRef, port: int, tls: ssl.SSLContext | None
) -> tuple[str, int]:
    """The address of this process's listener for ``port`` of ``sandbox`` (made once)."""
    hub = _get_hub()
    key = (str(sandbox.state_dir), port)
    with hub.lock:
        listener = hub.listeners.get(key)
        if listener is not None and not listener.closed:
            if tls is not None:
                listener.tls = tls
            return listener.address
        connector = make_connector(
            init, nsenter=sandbox._tools.nsenter, label=str(sandbox.state_dir)
        )
        try:
            listener = _Listener(hub, key, port, connector, tls, sandbox)
        except BaseException:
            connector.close()
            raise
        hub.listeners[key] = listener
    asyncio.run_coroutine_threadsafe(listener.start(), hub.loop).result(30)
    return listener.address


def close_under(root: Path) -> None:
    """Close this process's listeners for sandboxes recorded under ``root``."""
    _close(lambda key: Path(key[0]).parent == Path(root))


def close_all() -> None:
    _close(lambda key: True)


def _close(match: Callable[[tuple[str, int]], bool]) -> None:
    hub = _hub
    if hub is None:
        return
    with hub.lock:
        chosen = [lst for key, lst in hub.listeners.items() if match(key)]
    for listener in chosen:
        hub.call(listener.close)


def _after_fork_in_child() -> None:
    global _hub, _hub_lock
    _hub = None  # the loop thread does not exist in the child
    _hub_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
