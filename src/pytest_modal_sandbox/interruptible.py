"""Waiting in the main thread for another thread's result without holding up Ctrl-C.

A SIGINT can be taken by any thread of the process, while Python runs its handler in the main
thread only, the next time that thread runs Python code.  A main thread blocked in
``Future.result()`` is woken only by a signal that lands on it, so a Ctrl-C taken by another
thread waited until the result came - for a sandbox started ahead and waiting on its readiness
probe, until the probe's timeout (seen: ``test_ctrl_c_in_each_phase[local-setup]``, one run in
four under load).  Waiting in short steps bounds that delay.
"""

from __future__ import annotations

import concurrent.futures
from typing import TypeVar

__all__ = ["result"]

T = TypeVar("T")
STEP = 0.1  # seconds: how late a Ctrl-C taken by another thread can be


def result(future: concurrent.futures.Future[T]) -> T:
    """``future.result()``, waited for in steps of ``STEP`` seconds."""
    while not future.done():
        concurrent.futures.wait([future], timeout=STEP)
    return future.result()
