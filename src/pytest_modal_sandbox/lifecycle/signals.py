"""Ctrl-C and SIGTERM as a ``KeyboardInterrupt`` that cannot be lost in a ``modal`` call.

SIGTERM is handled like Ctrl-C (so finalizers and sweeps run when CI terminates pytest), and an
interrupt that lands in a blocking client call that absorbs it is delivered again.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["install_sigint_handler", "install_sigterm_handler", "interrupt_seen"]


def install_sigterm_handler() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl-C (``KeyboardInterrupt``) so finalizers and sweeps run.

    A previous Python handler is called first (chained); an ignored SIGTERM stays ignored.
    Returns a function that restores the previous handler.  Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        _INTERRUPT.raise_(frame, f"received signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return restore


class _Interrupt:
    """Ctrl-C and SIGTERM as a ``KeyboardInterrupt`` that cannot be lost.

    A blocking ``modal`` call that a ``KeyboardInterrupt`` hits cancels its coroutine and then
    waits for it; when the client's code absorbs the cancellation, the call returns normally
    and the interrupt is gone (seen: a readiness wait that went on polling after Ctrl-C, its
    sandbox alive until the probe's timeout).  So an interrupt that lands in such a call is
    delivered again every ``redeliver`` seconds until pytest has seen it
    (:func:`interrupt_seen`).  Anywhere else it is raised once, as usual.
    """

    def __init__(self, redeliver: float = 2.0) -> None:
        self.redeliver = redeliver
        self.pending = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def raise_(self, frame: Any, message: str = "") -> None:
        if _in_blocking_client_call(frame):
            with self._lock:
                self.pending = True
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._watch, name="pms-interrupt", daemon=True
                    )
                    self._thread.start()
        raise KeyboardInterrupt(message) if message else KeyboardInterrupt

    def _watch(self) -> None:
        """Deliver it again at a moment the main thread is outside the client's calls."""
        import _thread

        main = threading.main_thread().ident
        time.sleep(self.redeliver)
        while self.pending:
            frame = sys._current_frames().get(main) if main is not None else None
            if frame is None:
                return
            if _in_blocking_client_call(frame):
                time.sleep(0.01)
                continue
            _thread.interrupt_main(signal.SIGINT)  # runs our SIGINT handler in the main thread
            time.sleep(self.redeliver)


_INTERRUPT = _Interrupt()


def _in_blocking_client_call(frame: Any) -> bool:
    """Whether the main thread is waiting in a synchronicity (``modal`` client) blocking call."""
    depth = 0
    while frame is not None and depth < 80:
        if "synchronicity" in frame.f_code.co_filename:
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def interrupt_seen() -> None:
    """pytest has the interrupt (its ``pytest_keyboard_interrupt`` ran, or the session is
    finishing): stop delivering it again."""
    _INTERRUPT.pending = False


def install_sigint_handler() -> Callable[[], None]:
    """Ctrl-C as a ``KeyboardInterrupt`` that is not lost (see :class:`_Interrupt`).

    Our handler also keeps the ``modal`` client from swapping in its own SIGINT handler (it does
    so only over Python's default).  Installed only over the default handler (an ignored
    SIGINT stays ignored); returns a function that restores it.  Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPT.raise_(frame)

    signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        interrupt_seen()
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    return restore
