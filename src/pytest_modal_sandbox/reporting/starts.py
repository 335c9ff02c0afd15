"""Every sandbox start the run made, as its events tell it: what the progress view draws and the
summary times.  Fed on the run's owner, from any thread.  pytest-free."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..events import Event
from ..sandbox import Timings

__all__ = ["StartState", "StartTable"]


@dataclass
class StartState(Timings):
    """One start: requested, created, then ready (or attached, failed, cancelled)."""

    key: str = ""
    label: str = ""
    worker: str = ""
    ahead: bool = False
    sandbox_id: str = ""
    created: float | None = None
    ready: float | None = None
    attached: bool = False  # a share="run" sandbox another process started
    ended: float | None = None  # failed or cancelled at
    error: str = ""
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.ready is not None or self.ended is not None

    @property
    def total(self) -> float:
        return (self.create_seconds or 0.0) + (self.ready_seconds or 0.0)


class StartTable:
    """The run's starts by key, and how many sandboxes started ahead went to their test."""

    def __init__(self) -> None:
        self.states: dict[str, StartState] = {}
        self.taken = 0
        self._lock = threading.Lock()

    def feed(self, event: Event) -> StartState | None:
        """Apply ``event``; the start it changed, if any."""
        with self._lock:
            if event.kind == "taken":
                self.taken += 1
                return None
            if not event.start:
                return None  # an end or a keep: the ledger's business
            state = self.states.get(event.start)
            if state is None:
                state = StartState(
                    requested=event.t,
                    key=event.start,
                    label=event.label,
                    worker=event.worker,
                    ahead=event.ahead,
                )
                self.states[event.start] = state
            state.sandbox_id = event.sandbox_id or state.sandbox_id
            if event.kind == "created":
                state.created = event.t
            elif event.kind in ("ready", "attached"):
                state.ready = event.t
                state.attached = event.kind == "attached"
            elif event.kind in ("failed", "cancelled"):
                state.ended = event.t
                state.error = event.error
                state.cancelled = event.kind == "cancelled"
            return state

    def snapshot(self) -> list[StartState]:
        with self._lock:
            return list(self.states.values())

    @property
    def started_ahead(self) -> int:
        return sum(1 for s in self.snapshot() if s.ahead)
