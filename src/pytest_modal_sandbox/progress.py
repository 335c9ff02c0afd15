"""Live progress while sandboxes start: a line per sandbox, ``created -> ready`` with seconds.

The run's owner draws every start, its workers' included (their events reach it as they happen;
see ``events.py``).  pytest writes to the same terminal, so lines are written only when it does
not: while the main thread waits for a sandbox in a fixture (blocked in our code), and between
tests.  All output goes through the terminal reporter's public API, on lines of our own: pytest's
line is left as it is, and its file prefix is written again below ours when a wait interrupted it.

* :class:`LineView` (no terminal, or ``plain``): one line per step of each start.
* :class:`LiveView` (a terminal): one line per sandbox; while a fixture waits, the sandbox it
  waits for on a status line rewritten in place (``creating... 0.4s``).
* :class:`NullView`: ``off``, ``-q``, xdist workers (the controller draws), no terminal reporter.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from .reporting.starts import StartState

__all__ = ["LineView", "LiveView", "NullView", "make_view"]

PREFIX = "modal-sandbox: "
TICK = 0.25


def _name(s: StartState, show_worker: bool) -> str:
    where = f"[{s.worker}] " if show_worker and s.worker else ""
    return f"{PREFIX}{where}{s.label}"


def step_lines(s: StartState, show_worker: bool) -> list[tuple[str, str]]:
    """(step, line) for each step the start went through so far."""
    name, out = _name(s, show_worker), []
    if s.created is not None:
        out.append(("created", f"{name} created in {s.create_seconds:.2f}s: {s.sandbox_id}"))
    if s.attached:
        out.append(("attached", f"{name} attached (shared, already ready): {s.sandbox_id}"))
    elif s.ready is not None and s.created is not None:
        ready = f"ready in {s.ready_seconds:.2f}s ({s.ready - s.requested:.2f}s in all)"
        out.append(("ready", f"{name} {ready}"))
    if s.cancelled:
        out.append(("cancelled", f"{name} not needed any more: ended before it was ready"))
    elif s.ended is not None:
        out.append(("failed", f"{name} FAILED after {s.ended - s.requested:.2f}s: {s.error}"))
    return out


def live_text(s: StartState, now: float) -> str:
    """One line per start, rewritten as it goes; the id last (what a narrow screen cuts)."""
    name, sid = _name(s, False), f"  {s.sandbox_id}" if s.sandbox_id else ""
    if s.cancelled:
        return f"{name} not needed any more: ended before it was ready{sid}"
    if s.ended is not None:
        return f"{name} FAILED after {s.ended - s.requested:.2f}s: {s.error}{sid}"
    if s.attached:
        return f"{name} attached (shared, already ready){sid}"
    if s.created is None:
        if s.ready is not None:  # no "created" seen: ready all the same
            return f"{name} ready after {s.ready - s.requested:.2f}s{sid}"
        return f"{name} creating... {now - s.requested:.1f}s"
    created = f"created {s.create_seconds:.2f}s"
    if s.ready is None:
        return f"{name} {created} -> waiting for readiness... {now - s.created:.1f}s{sid}"
    return f"{name} {created} -> ready {s.ready_seconds:.2f}s{sid}"


class NullView:
    """Draws nothing."""

    def show(self, state: StartState) -> None:
        pass

    @contextlib.contextmanager
    def waiting(self, label: str) -> Iterator[None]:
        """A fixture waits for the start of ``label`` (the main thread is blocked in it)."""
        yield

    def between_tests(self) -> None:
        pass

    def pytest_writes(self, nodeid: str) -> None:
        pass

    def pytest_starts_test(self) -> None:
        pass

    def settle(self) -> None:
        """Someone else writes to the terminal next: leave it on a fresh line."""

    def close(self) -> None:
        pass


class LineView(NullView):
    """A line per step of each start.  ``open_lines``: the last line is left without its
    newline, for pytest to end when it goes on (so no empty line is left between)."""

    def __init__(
        self,
        reporter: Any,
        capman: Any,
        writer: Any = None,
        *,
        show_worker: bool = False,
        open_lines: bool = True,
    ) -> None:
        self.reporter = reporter
        self.writer = writer  # pytest's terminal writer: how much of its line is written
        self.capman = capman
        self.show_worker = show_worker
        self.open_lines = open_lines
        self.states: dict[str, StartState] = {}
        self.shown: set[tuple[str, str]] = set()  # (start, step) written
        self.lock = threading.RLock()
        self.waiting_for: str | None = None  # the label a fixture waits for (main thread blocked)
        self.line_open = False  # our last line has no newline yet
        self.interrupted = False  # pytest's line was interrupted by ours
        self.closed = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def show(self, state: StartState) -> None:
        with self.lock:
            self.states[state.key] = state

    def _uncaptured(self) -> contextlib.AbstractContextManager[None]:
        """pytest captures output during setup: not ours."""
        if self.capman is None:
            return contextlib.nullcontext()
        return self.capman.global_and_fixture_disabled()  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def waiting(self, label: str) -> Iterator[None]:
        with self._uncaptured():
            with self.lock:
                self.waiting_for = label
                if self._ticker is None:
                    self._ticker = threading.Thread(
                        target=self._tick, name="pms-progress", daemon=True
                    )
                    self._ticker.start()
                self.draw()
            try:
                yield
            finally:
                with self.lock:
                    self.draw(end_of_wait=True)
                    self.waiting_for = None

    def pytest_writes(self, nodeid: str) -> None:
        """pytest is about to write a test's result: give it its line back, below ours."""
        with self.lock:
            interrupted, self.interrupted = self.interrupted, False
            self.line_open = False  # pytest ends it: its next line starts with a newline
            r = self.reporter
            if interrupted and self.open_lines and r.showfspath and not r.showlongtestinfo:
                with contextlib.suppress(Exception):
                    r.write_fspath_result(nodeid, "")

    def pytest_starts_test(self) -> None:
        """pytest writes its line for the next test itself (it starts a new one after ours)."""
        with self.lock:
            self.interrupted = self.line_open = False

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self.lock:
                if self.waiting_for is not None:
                    self.draw()

    def between_tests(self) -> None:
        self.draw()

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            if not self.closed:
                self.draw(end_of_wait=True)
                self.settle()
                self.closed = True

    def settle(self) -> None:
        with self.lock:
            if self.line_open:
                self._write("\n")
                self.line_open = False

    def _write(self, text: str) -> None:
        with contextlib.suppress(Exception):  # progress is cosmetic: never break a run
            self.reporter.write(text)
            self.reporter.flush()

    def line(self, text: str) -> None:
        """A line of ours, below whatever is on the screen."""
        if self.line_open:
            text = "\n" + text
        else:
            with contextlib.suppress(Exception):
                self.reporter.ensure_newline()  # pytest's line stays as it is, above ours
                if self.writer is not None and self.writer.width_of_current_line:
                    self._write("\n")  # a line pytest did not end (xdist's result letters)
        self._write(text if self.open_lines else text + "\n")
        self.line_open, self.interrupted = self.open_lines, True

    def draw(self, *, end_of_wait: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            for state in list(self.states.values()):
                for step, text in step_lines(state, self.show_worker):
                    if (state.key, step) not in self.shown:
                        self.shown.add((state.key, step))
                        self.line(text)


class LiveView(LineView):
    """One final line per sandbox; while a fixture waits, the start it waits for on a status
    line rewritten in place."""

    def __init__(
        self, reporter: Any, capman: Any, writer: Any = None, *, open_lines: bool = True
    ) -> None:
        super().__init__(reporter, capman, writer, open_lines=open_lines)
        self.final: set[str] = set()  # starts whose final line is written
        self.status = False  # our open line is the status line

    def _rewrite(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.reporter.rewrite(text, erase=True)
            self.reporter.flush()

    def draw(self, *, end_of_wait: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            now = time.time()
            for state in list(self.states.values()):
                if state.done and state.key not in self.final:
                    self.final.add(state.key)
                    if self.status:  # the status line becomes this start's final line
                        self._rewrite(live_text(state, now))
                        self.status = False
                    else:
                        self.line(live_text(state, now))
            busy = [s for s in self.states.values() if not s.done and s.label == self.waiting_for]
            if busy and not end_of_wait:
                if self.status:
                    self._rewrite(live_text(busy[0], now))
                else:
                    self.line(live_text(busy[0], now))
                    self.status = True
            elif self.status:  # the wait is over before the start: clear the status line
                self._rewrite("")
                self._write("\r")
                self.status = self.line_open = False


def make_view(config: Any, mode: str, *, owner: bool, controller: bool) -> NullView:
    """The view for this process: ``mode`` is auto, plain or off."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    verbosity = int(getattr(config.option, "verbose", 0) or 0)
    if mode == "off" or verbosity < 0 or not owner or reporter is None:
        return NullView()
    capman = config.pluginmanager.get_plugin("capturemanager")
    writer = config.get_terminal_writer()
    live = mode == "auto" and bool(reporter.isatty) and os.environ.get("TERM") != "dumb"
    # pytest writes next, after a line we leave open; not so on the controller (its main thread
    # relays results as letters wherever the line is) nor with -s (the test's own output)
    open_lines = not controller and config.getoption("capture", "fd") != "no"
    if live and not controller:
        return LiveView(reporter, capman, writer, open_lines=open_lines)
    return LineView(reporter, capman, writer, show_worker=controller, open_lines=open_lines)
