"""A Ctrl-C taken by another thread still interrupts the main thread's wait for a result."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from types import FrameType

import pytest

from pytest_modal_sandbox import interruptible


class Interrupted(Exception):
    pass


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs main")
def test_a_signal_taken_by_another_thread_interrupts_the_wait() -> None:
    future: concurrent.futures.Future[str] = concurrent.futures.Future()
    taken = threading.Event()

    def other_thread() -> None:
        time.sleep(0.3)  # the main thread is waiting by then
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # this thread takes it
        taken.set()

    fallback = threading.Timer(10, lambda: future.set_result("nobody interrupted the wait"))
    previous = signal.signal(signal.SIGUSR1, _raise)
    try:
        fallback.start()
        with pytest.raises(Interrupted):
            threading.Thread(target=other_thread).start()
            interruptible.result(future)  # a plain future.result() waits for the fallback
        assert taken.is_set()
        assert not future.done()  # interrupted while it waited, not once the result came
    finally:
        fallback.cancel()
        signal.signal(signal.SIGUSR1, previous)


def test_the_result_and_the_exception_come_through() -> None:
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    threading.Timer(0.2, lambda: done.set_result(7)).start()
    assert interruptible.result(done) == 7
    failed: concurrent.futures.Future[int] = concurrent.futures.Future()
    failed.set_exception(TimeoutError("the start's own timeout"))  # not mistaken for a step's
    with pytest.raises(TimeoutError, match="own timeout"):
        interruptible.result(failed)
