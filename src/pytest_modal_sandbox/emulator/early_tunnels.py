"""Tunnel endpoints that exist before their container does (``--start-latency-ms``).

Modal's ``SandboxCreateV2`` answers at once with the sandbox's encrypted tunnel endpoints,
while the container is still being scheduled and started.  Here the runtime's tunnel
listener can only be opened once the container runs, so under a start latency each port gets
an :class:`EarlyTunnel` at create: a listener on 127.0.0.1 (and, for other sandboxes, on
this machine's own address with the same port: ``runtime/hostaddr.py``) whose address goes
into the create response; connections made before the container is up wait, and once it runs every
connection is relayed, byte for byte, to the runtime's listener (which terminates TLS, counts
the connection as activity, and forwards it into the sandbox).  When the sandbox ends without
ever starting, waiting connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..runtime import bind_pair, from_this_machine

BUFFER = 65536


class EarlyTunnel:
    """A listener handed out at create; relays to ``target`` once :meth:`connect_to` is called."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._peer_server: asyncio.Server | None = None
        self._target: asyncio.Future[tuple[str, int] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._connections: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    @classmethod
    async def open(cls) -> EarlyTunnel:
        tunnel = cls()
        loopback, peer = bind_pair()
        tunnel._server = await asyncio.start_server(tunnel._accept, sock=loopback, limit=BUFFER)
        if peer is not None:  # the same port at this machine's address, for its sandboxes
            tunnel._peer_server = await asyncio.start_server(
                tunnel._accept_local, sock=peer, limit=BUFFER
            )
        host, port = tunnel._server.sockets[0].getsockname()[:2]
        tunnel.address = (str(host), int(port))
        return tunnel

    def connect_to(self, host: str, port: int) -> None:
        """The container runs: relay every connection (waiting ones too) to ``host:port``."""
        if not self._target.done():
            self._target.set_result((host, port))

    def close(self) -> None:
        """Stop listening; connections still waiting for a container are dropped."""
        if not self._target.done():
            self._target.set_result(None)
        for server in (self._server, self._peer_server):
            if server is not None:
                server.close()
        for task in list(self._connections):
            task.cancel()

    async def _accept_local(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None or not from_this_machine(sock):
            writer.close()
            return
        await self._accept(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = await asyncio.shield(self._target)
        if target is None:
            return
        up_reader, up_writer = await asyncio.open_connection(*target, limit=BUFFER)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        try:
            # Both directions end with EOF (half-closes pass through); a reset of either
            # side ends both, or the other would wait for bytes that never come.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (a client's shutdown(SHUT_WR) passes through); a
    connection error is raised."""
    while chunk := await reader.read(BUFFER):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
