"""What every emulator service shares: UNIMPLEMENTED fallbacks, error mapping, RPC counting,
added latency, the credential check and injected faults, applied by wrapping the grpclib
handler mapping."""

from __future__ import annotations

import asyncio
import collections
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpclib.const
from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .chaos import RESET, Chaos, Fault
from .rpc_error import RpcError

C = TypeVar("C", bound=type)
Handler = Callable[[Any], Awaitable[None]]
Check = Callable[[Any], None]


def fill_unimplemented(cls: C) -> C:
    """Answer every abstract RPC of a generated base class with UNIMPLEMENTED (naming it)."""

    def fallback(name: str) -> Callable[[Any, Any], Awaitable[None]]:
        async def unimplemented(self: Any, stream: Any) -> None:
            raise GRPCError(
                Status.UNIMPLEMENTED,
                f"{name} is not implemented by the pytest-modal-sandbox emulator",
            )

        return unimplemented

    for name in list(getattr(cls, "__abstractmethods__", ())):
        setattr(cls, name, fallback(name))
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    return cls


class Stats:
    """RPC counts (and server-side seconds) per service and method, for the admin service.

    Thread-safe; ``seconds`` is the time spent handling (added latency included; for streams,
    until the stream ended), which lets a benchmark split wall time into server and client.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._seconds: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.inflight = 0  # RPCs being handled now (event loop only)

    def count(self, service: str, method: str) -> None:
        with self._lock:
            self._counts[service][method] += 1

    def add_time(self, service: str, method: str, seconds: float) -> None:
        with self._lock:
            per = self._seconds[service]
            per[method] = per.get(method, 0.0) + seconds

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {svc: dict(sorted(c.items())) for svc, c in sorted(self._counts.items())}

    def seconds(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {svc: dict(sorted(t.items())) for svc, t in sorted(self._seconds.items())}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._seconds.clear()


class Instrumented:
    """A servable whose handlers are the wrapped servicer's, plus the shared behaviour.

    ``service`` labels the counters ("control", "router"); ``check`` (if given) runs first
    and may raise ``GRPCError`` (the credential checks); ``RpcError`` becomes ``GRPCError``
    (with Modal's ``RPCRetryPolicy`` detail when it has a ``retry_after``); ``chaos`` (if
    given) makes RPCs fail before, after or midway through their work.
    """

    def __init__(
        self,
        servicer: Any,
        service: str,
        stats: Stats,
        *,
        latency: float = 0.0,
        check: Check | None = None,
        chaos: Chaos | None = None,
    ) -> None:
        self._servicer = servicer
        self._service = service
        self._stats = stats
        self._latency = latency
        self._check = check
        self._chaos = chaos

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._servicer.__mapping__()
        return {
            path: grpclib.const.Handler(
                self._wrap(
                    path.rsplit("/", 1)[-1],
                    h.func,
                    streams=h.cardinality
                    in (
                        grpclib.const.Cardinality.UNARY_STREAM,
                        grpclib.const.Cardinality.STREAM_STREAM,
                    ),
                ),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in mapping.items()
        }

    def _wrap(self, method: str, func: Handler, *, streams: bool) -> Handler:
        async def handler(stream: Any) -> None:
            self._stats.count(self._service, method)
            self._stats.inflight += 1
            started = time.perf_counter()
            try:
                if self._latency > 0:
                    await asyncio.sleep(self._latency)
                if self._check is not None:
                    self._check(stream)
                fault = None
                if self._chaos is not None:
                    fault = self._chaos.draw(streams_answers=streams)
                if fault is None:
                    await func(stream)
                else:
                    await self._with_fault(method, func, stream, fault, streams)
            except RpcError as err:
                details = None
                if err.retry_after is not None:
                    details = [api_pb2.RPCRetryPolicy(retry_after_secs=err.retry_after)]
                raise GRPCError(Status[err.status], err.message, details) from None
            finally:
                self._stats.inflight -= 1
                self._stats.add_time(self._service, method, time.perf_counter() - started)

        handler.__name__ = method
        assert inspect.iscoroutinefunction(handler)
        return handler

    async def _with_fault(
        self, method: str, func: Handler, stream: Any, fault: Fault, streams: bool
    ) -> None:
        """Run ``func`` with ``fault`` striking before, after or midway through it."""
        assert self._chaos is not None
        faulty = _FaultyStream(
            stream, fault, lambda: self._chaos_struck(method, fault), streams=streams
        )
        try:
            if fault.when != "before":
                await func(faulty)
            await faulty.strike()  # a midway fault on a stream that ended first strikes here
        except _Dropped:
            pass  # the stream was reset: nothing more may be sent on it

    def _chaos_struck(self, method: str, fault: Fault) -> None:
        assert self._chaos is not None
        self._chaos.injected(method, fault)


class _Dropped(Exception):
    """The stream was reset by an injected fault (the handler just ends)."""


class _FaultyStream:
    """A grpclib server stream whose answers meet an injected fault.

    ``after`` on a unary answer withholds it (the work is done, the answer lost); ``midway``
    strikes instead of sending the n-th message of a stream of answers; :meth:`strike` sends
    the fault: a retryable status, or a reset of the stream.
    """

    def __init__(
        self, stream: Any, fault: Fault, on_strike: Callable[[], None], *, streams: bool
    ) -> None:
        self._stream = stream
        self._fault = fault
        self._on_strike = on_strike
        self._streams = streams
        self._sent = 0
        self._struck = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __aiter__(self) -> Any:
        return self._stream.__aiter__()

    async def send_message(self, message: Any) -> None:
        self._sent += 1
        if self._fault.when == "midway" and self._sent == self._fault.after_messages:
            await self.strike()
        if self._fault.when == "after" and not self._streams:
            return  # the work is done; its answer is lost
        await self._stream.send_message(message)

    async def strike(self) -> None:
        if self._struck:
            return
        self._struck = True
        self._on_strike()
        if self._fault.how == RESET:
            await self._stream.cancel()
            raise _Dropped
        raise GRPCError(Status[self._fault.how], self._fault.message)
