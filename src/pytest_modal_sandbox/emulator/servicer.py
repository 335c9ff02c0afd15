"""What every emulator service shares: UNIMPLEMENTED fallbacks, error mapping, RPC counting,
added latency and the credential check, applied by wrapping the grpclib handler mapping."""

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
    and may raise ``GRPCError`` (the credential checks); ``RpcError`` becomes ``GRPCError``.
    """

    def __init__(
        self,
        servicer: Any,
        service: str,
        stats: Stats,
        *,
        latency: float = 0.0,
        check: Check | None = None,
    ) -> None:
        self._servicer = servicer
        self._service = service
        self._stats = stats
        self._latency = latency
        self._check = check

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = self._servicer.__mapping__()
        return {
            path: grpclib.const.Handler(
                self._wrap(path.rsplit("/", 1)[-1], h.func),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in mapping.items()
        }

    def _wrap(self, method: str, func: Handler) -> Handler:
        async def handler(stream: Any) -> None:
            self._stats.count(self._service, method)
            self._stats.inflight += 1
            started = time.perf_counter()
            try:
                if self._latency > 0:
                    await asyncio.sleep(self._latency)
                if self._check is not None:
                    self._check(stream)
                await func(stream)
            except RpcError as err:
                raise GRPCError(Status[err.status], err.message) from None
            finally:
                self._stats.inflight -= 1
                self._stats.add_time(self._service, method, time.perf_counter() - started)

        handler.__name__ = method
        assert inspect.iscoroutinefunction(handler)
        return handler
