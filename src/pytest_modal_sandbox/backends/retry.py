"""Retrying a backend's idempotent calls through transient failures, within a deadline.

Modal's client retries a control-plane call 3 times within a second and then raises; a CI run
against Modal meets bursts of unavailable servers, reset streams and internal errors that last
longer.  So the backend retries once more, here: only calls that are safe to repeat (which
ones, and which errors are transient, is the backend's to say — ``backends/modal.py`` writes
both down), with a growing, jittered delay, until a deadline; then :class:`RetriesExhausted`
says what kept failing.  Nothing here knows Modal.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import RetriesExhausted

__all__ = ["Backoff", "retrying"]

T = TypeVar("T")


class Backoff:
    """Delays that double from ``first`` up to ``most`` (each jittered down by up to half, so
    workers that failed together do not retry together), until ``seconds`` have passed."""

    def __init__(
        self,
        seconds: float,
        *,
        first: float = 0.25,
        most: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.seconds = seconds
        self.attempts = 0
        self._delay = first
        self._most = most
        self._clock = clock
        self._sleep = sleep
        self._deadline = clock() + seconds

    def left(self) -> float:
        return self._deadline - self._clock()

    def wait(self) -> bool:
        """Sleep before the next attempt; False (at once) when the deadline has passed."""
        self.attempts += 1
        left = self.left()
        if left <= 0:
            return False
        self._sleep(min(self._delay * random.uniform(0.5, 1.0), left))
        self._delay = min(self._delay * 2, self._most)
        return True


def retrying(
    call: Callable[[], T],
    *,
    what: str,
    transient: Callable[[BaseException], bool],
    seconds: float,
    backoff: Callable[[float], Backoff] = Backoff,
) -> T:
    """``call()``'s result, retrying it while it raises a ``transient`` error, for up to
    ``seconds``; any other error propagates at once.  Only for calls safe to repeat."""
    waits = backoff(seconds)
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            if not waits.wait():
                raise RetriesExhausted(
                    f"{what}: still failing after {waits.attempts} attempts in {seconds:g} s "
                    f"(transient errors are retried until then): {type(exc).__name__}: {exc}"
                ) from exc
