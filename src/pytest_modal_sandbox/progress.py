"""Live progress while sandboxes start: a line per sandbox, ``created -> ready`` with seconds.

Where the events come from and where they are drawn:

* The only process (no xdist) draws its own events.  Workers cannot: their output is not the
  terminal, and their test reports reach the controller only after a phase ends - too late to
  show "created, not ready yet".  So each worker appends its events to a per-run file
  (``runs/<run id>.d/progress.jsonl``, next to the run's claim locks) and the controller tails
  it.  Workers on another machine (``--tx ssh``) share no file: their sandboxes then show only
  in the summary, which travels on the reports.
* On a tty the lines of the sandboxes being started are rewritten in place (cursor up, clear
  line); otherwise each transition is printed as a plain line once.  ``-q`` silences it.
* pytest writes to the same terminal, so drawing is confined to moments when nothing else
  writes: while the main thread waits in a sandbox fixture (it is blocked in our code), at
  hook points between tests, and on the controller (whose main thread only relays reports) at
  any time - there a redraw in place is skipped as soon as something else wrote to the line,
  and the next state change starts a fresh block below it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FileSink", "NullSink", "Progress", "Tail", "Tracker", "View"]

PREFIX = "modal-sandbox: "
TICK = 0.25


class Sink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...


class NullSink:
    def emit(self, event: dict[str, Any]) -> None:
        pass


class FileSink:
    """A worker's events, appended to the run's progress file (one JSON object per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event) + "\n").encode()
        with self._lock, contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)  # one O_APPEND write: lines from workers never interleave
            finally:
                os.close(fd)


class Tracker:
    """Hands out one :class:`Track` per sandbox start; events go to ``sink``."""

    def __init__(self, sink: Sink, worker: str, scrub: Callable[[str], str] = str) -> None:
        self.sink = sink
        self.worker = worker
        self.scrub = scrub
        self._seq = itertools.count(1)

    def start(self, label: str) -> Track:
        return Track(self, f"{self.worker}:{next(self._seq)}", label)


class Track:
    def __init__(self, tracker: Tracker, key: str, label: str) -> None:
        self.tracker = tracker
        self.key = key
        self.label = label
        self.sandbox_id = ""
        self.created_here = False
        self._emit("requested")

    def _emit(self, kind: str, **extra: Any) -> None:
        event = {
            "k": kind,
            "key": self.key,
            "label": self.label,
            "worker": self.tracker.worker,
            "id": self.sandbox_id,
            "t": time.time(),
            **extra,
        }
        with contextlib.suppress(Exception):  # progress must never break a start
            self.tracker.sink.emit(event)

    def created(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.created_here = True
        self._emit("created")

    def ready(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self._emit("ready" if self.created_here else "attached")

    def cancelled(self) -> None:
        self._emit("cancelled")

    def failed(self, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        self._emit("failed", error=self.tracker.scrub(first)[:300])


@dataclass
class Start:
    key: str
    label: str
    worker: str
    requested: float
    sandbox_id: str = ""
    created: float | None = None
    ready: float | None = None
    attached: bool = False
    error: str = ""
    failed_at: float | None = None  # or cancelled at
    cancelled: bool = False
    shown_state: str = ""  # the state last drawn (tty): creating, waiting or final
    plain_shown: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.ready is not None or self.failed_at is not None

    @property
    def state(self) -> str:
        if self.done:
            return "final"
        return "creating" if self.created is None else "waiting"

    @property
    def shown_final(self) -> bool:
        return self.shown_state == "final"

    def name(self, show_worker: bool) -> str:
        where = f"[{self.worker}] " if show_worker and self.worker else ""
        return f"{PREFIX}{where}{self.label}"

    def _id(self) -> str:
        return f"  {self.sandbox_id}" if self.sandbox_id else ""

    def live_text(self, now: float, show_worker: bool) -> str:
        """One line, rewritten in place; the id goes last (the part cut on a narrow screen)."""
        name = self.name(show_worker)
        if self.cancelled:
            return f"{name} not needed any more: ended before it was ready{self._id()}"
        if self.failed_at is not None:
            took = self.failed_at - self.requested
            return f"{name} FAILED after {took:.2f}s: {self.error}{self._id()}"
        if self.attached:
            return f"{name} attached (shared, already ready){self._id()}"
        if self.created is None:
            if self.ready is not None:  # no "created" seen (a lost event): ready all the same
                return f"{name} ready after {self.ready - self.requested:.2f}s{self._id()}"
            return f"{name} creating... {now - self.requested:.1f}s"
        created = f"created {self.created - self.requested:.2f}s"
        if self.ready is None:
            waited = now - self.created
            return f"{name} {created} -> waiting for readiness... {waited:.1f}s{self._id()}"
        return f"{name} {created} -> ready {self.ready - self.created:.2f}s{self._id()}"

    def plain_lines(self, show_worker: bool) -> list[tuple[str, str]]:
        """(step, line) for each transition so far, for output that is not a terminal."""
        name = self.name(show_worker)
        out = []
        if self.created is not None:
            took = self.created - self.requested
            out.append(("created", f"{name} created in {took:.2f}s: {self.sandbox_id}"))
        if self.attached:
            out.append(("attached", f"{name} attached (shared, already ready): {self.sandbox_id}"))
        elif self.ready is not None and self.created is not None:
            took, total = self.ready - self.created, self.ready - self.requested
            out.append(("ready", f"{name} ready in {took:.2f}s ({total:.2f}s in all)"))
        if self.cancelled:
            out.append(("cancelled", f"{name} not needed any more: ended before it was ready"))
        elif self.failed_at is not None:
            took = self.failed_at - self.requested
            out.append(("failed", f"{name} FAILED after {took:.2f}s: {self.error}"))
        return out


class Terminal(Protocol):
    """What the view needs of pytest: its terminal writer, reporter and capture manager."""

    def write(self, text: str, last_line: str, *, raw: bool) -> None: ...

    def current_line(self) -> str: ...

    def width(self) -> int: ...


class View:
    """Draws :class:`Start` lines.  ``feed`` may be called from any thread; drawing happens
    only when it is safe (see the module docstring)."""

    def __init__(
        self,
        terminal: Terminal,
        *,
        in_place: bool,
        always_safe: bool = False,
        show_worker: bool = False,
        controller: bool = False,
        complete_lines: bool = False,
    ) -> None:
        self.terminal = terminal
        self.in_place = in_place
        self.always_safe = always_safe
        self.controller = controller
        self.complete_lines = complete_lines  # pytest starts a new line for each output
        self.show_worker = show_worker
        self.starts: dict[str, Start] = {}
        self._lock = threading.RLock()
        self._window = 0
        self._region: list[str] = []  # keys drawn in the live block (tty)
        self._region_lines = 0
        self._tail: str | None = ""  # pytest's line as re-printed below the block (None: not)
        self._last = ""  # the last line drawn
        self._open_line: str | None = None  # plain mode: pytest's line, while ours is last
        self._changed = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    # -- input -----------------------------------------------------------------------------

    def feed(self, event: dict[str, Any]) -> None:
        key = str(event.get("key", ""))
        kind = event.get("k")
        t = float(event.get("t", time.time()))
        with self._lock:
            start = self.starts.get(key)
            if start is None:
                start = Start(
                    key, str(event.get("label", "")), str(event.get("worker", "")), requested=t
                )
                self.starts[key] = start
            if event.get("id"):
                start.sandbox_id = str(event["id"])
            if kind == "created":
                start.created = t
            elif kind == "ready":
                start.ready = t
            elif kind == "attached":
                start.ready = t
                start.attached = True
            elif kind == "failed":
                start.failed_at = t
                start.error = str(event.get("error", ""))
            elif kind == "cancelled":
                start.failed_at = t
                start.cancelled = True
            self._changed = True
        self._ensure_ticker()
        if self.always_safe:
            self.draw()

    # -- when drawing is safe --------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """The main thread is blocked on a sandbox start: the ticker may draw meanwhile."""
        with self._lock:
            self._window += 1
        try:
            self.draw()
            yield
        finally:
            with self._lock:
                self.draw()
                self._window -= 1

    def tests_started(self) -> None:
        """Controller: xdist's start-up status lines (rewritten with ``\\r``) are over; from
        now on the controller's main thread only relays reports, so draw at any time."""
        if self.controller and not self.always_safe:
            self.always_safe = True
            self.draw()

    def pump(self) -> None:
        """A hook point between tests (main thread): show what finished meanwhile."""
        self.draw(final_only=not self.always_safe)

    def close(self) -> None:
        """The session is over: draw what is final, then nothing more (pytest's summary is
        next; events of workers still shutting down after an interrupt are dropped)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self._lock:
            self._draw_unlocked_final()
            self._closed = True

    def _draw_unlocked_final(self) -> None:
        self.draw(final_only=True)
        if self._open_line is not None:  # the run is over: pytest's line gets nothing more
            self._open_line = None
            self.terminal.write("\n", "", raw=True)

    def _ensure_ticker(self) -> None:
        with self._lock:
            if self._ticker is None and not self._stop.is_set():
                self._ticker = threading.Thread(target=self._tick, name="pms-progress", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK if self.in_place else TICK / 2):
            with self._lock:
                if self._window or self.always_safe:
                    self.draw(tick=True)

    # -- drawing ---------------------------------------------------------------------------

    def draw(self, *, final_only: bool = False, tick: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self.in_place:
                    self._draw_in_place(final_only=final_only, tick=tick)
                else:
                    self._draw_plain(final_only=final_only)
            except Exception:  # progress is cosmetic; never let it break a run
                pass

    def _draw_plain(self, *, final_only: bool) -> None:
        lines = []
        for start in list(self.starts.values()):
            if final_only and not start.done:
                continue
            for step, text in start.plain_lines(self.show_worker):
                if step not in start.plain_shown:
                    start.plain_shown += (step,)
                    lines.append(text)
            if start.done:
                start.shown_state = "final"
        if not lines:
            return
        if self._open_line is None:  # start below pytest's line; it is restored later
            self._open_line = self.terminal.current_line()
            out = ("\n" if self._open_line else "") + "\n".join(lines)
        else:
            out = "\n" + "\n".join(lines)
        self.terminal.write(out, lines[-1], raw=True)

    def _restore(self) -> None:
        """Plain mode: put pytest's current line back below our lines, for it to go on."""
        if self._open_line is not None:
            line, self._open_line = self._open_line, None
            self.terminal.write("\n" + line, line, raw=True)

    @contextlib.contextmanager
    def pytest_writes(self) -> Iterator[None]:
        """pytest is about to write (main thread): give it its line back, and draw nothing
        until it is done."""
        with self._lock:
            self._restore()
            yield

    def _draw_in_place(self, *, final_only: bool, tick: bool) -> None:
        """The block of start lines sits just above pytest's current line (re-printed below
        it), so pytest can go on appending result letters while the block is rewritten.  When
        pytest writes whole lines (xdist with -v) the block is simply the last lines."""
        cur = self.terminal.current_line()
        if self._region_lines:
            intact = cur.startswith(self._tail) if self._tail is not None else cur == self._last
            if not intact:  # pytest began a new line since: the block scrolled away, leave it
                self._region = []
                self._region_lines = 0
        if tick and not self._changed and not self._region_lines:
            return  # the clock alone only refreshes an intact block
        width = max(self.terminal.width() - 1, 20)
        self._changed = False
        for start in self.starts.values():
            # a new block outside a wait shows only what changed: where pytest keeps breaking
            # the block (xdist -v), each sandbox then shows once per state, not once per test
            wanted = not start.shown_final if self._window else start.state != start.shown_state
            if wanted and start.key not in self._region:
                self._region.append(start.key)
        if not self._region_lines and final_only:
            # a new block outside a safe moment: only lines that will not change any more
            self._region = [k for k in self._region if self.starts[k].done]
        if not self._region:
            return
        now = time.time()
        texts = [self.starts[k].live_text(now, self.show_worker)[:width] for k in self._region]
        if self._region_lines:
            up = self._region_lines - (self._tail is None)
            top = "\r" + (f"\x1b[{up}A" if up else "")
            tail = None if self._tail is None else cur
        else:
            top = "\n" if cur else ""
            tail = None if (self.complete_lines and cur) else cur
        if tail is None:
            out, last = top + "\n".join(t + "\x1b[K" for t in texts), texts[-1]
        else:
            out, last = top + "".join(t + "\x1b[K\n" for t in texts) + tail + "\x1b[K", tail
        self.terminal.write(out, last, raw=True)
        # a line as wide as the screen may wrap: then the cursor cannot find the block
        # again, and the next change starts a new one
        self._region_lines = len(texts) if len(last) <= width else 0
        self._tail, self._last = tail, last
        for k in self._region:
            self.starts[k].shown_state = self.starts[k].state
        if not self._region_lines or all(self.starts[k].done for k in self._region):
            self._region = []  # the block is final; the next one starts below it
            self._region_lines = 0


class Tail:
    """The controller's reader of the run's progress file: feeds new lines to ``feed``."""

    def __init__(self, path: Path, feed: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.feed = feed
        self._offset = 0
        self._buf = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pms-progress-tail", daemon=True)

    def start(self) -> Tail:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.read()

    def read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        self._offset += len(data)
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.feed(event)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.read()


class Progress:
    """One process's progress machinery: the tracker its starts report to, and (in the only
    process or the controller) the view that draws."""

    def __init__(
        self, tracker: Tracker, view: View | None = None, tail: Tail | None = None
    ) -> None:
        self.tracker = tracker
        self.view = view
        self.tail = tail

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self.view is None:
            yield
            return
        with self.view.waiting():
            yield

    def pump(self) -> None:
        if self.view is not None:
            self.view.pump()

    def tests_started(self) -> None:
        if self.view is not None:
            self.view.tests_started()

    @contextlib.contextmanager
    def pytest_writes(self) -> Iterator[None]:
        if self.view is None:
            yield
            return
        with self.view.pytest_writes():
            yield

    def close(self) -> None:
        if self.tail is not None:
            self.tail.stop()
        if self.view is not None:
            self.view.close()


class PytestTerminal:
    """The :class:`Terminal` of a pytest process: its terminal reporter, with capturing
    suspended while we write (a sandbox fixture runs while pytest captures output)."""

    def __init__(self, reporter: Any, capman: Any) -> None:
        self.reporter = reporter
        self.tw = reporter._tw
        self.capman = capman

    def _uncaptured(self) -> contextlib.AbstractContextManager[None]:
        if self.capman is None:
            return contextlib.nullcontext()
        return self.capman.global_and_fixture_disabled()  # type: ignore[no-any-return]

    def write(self, text: str, last_line: str, *, raw: bool) -> None:
        with self._uncaptured():
            self.tw.write_raw(text, flush=True)
        if hasattr(self.tw, "_current_line"):
            self.tw._current_line = last_line  # the line pytest goes on writing to

    def current_line(self) -> str:
        return str(getattr(self.tw, "_current_line", ""))

    def width(self) -> int:
        return int(self.tw.fullwidth)


def setup(config: Any, *, role: str, worker: str, run_dir: Path, mode: str, scrub: Any) -> Progress:
    """The progress machinery for this process (``mode``: auto, plain or off)."""
    path = run_dir / "progress.jsonl"
    verbosity = int(getattr(config.option, "verbose", 0) or 0)
    if mode == "off" or verbosity < 0:
        return Progress(Tracker(NullSink(), worker, scrub))
    if role == "worker":
        return Progress(Tracker(FileSink(path), worker, scrub))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return Progress(Tracker(NullSink(), worker, scrub))
    in_place = mode == "auto" and bool(reporter.isatty) and os.environ.get("TERM") != "dumb"
    terminal = PytestTerminal(reporter, config.pluginmanager.get_plugin("capturemanager"))
    if role == "controller":
        view = View(
            terminal,
            in_place=in_place,
            show_worker=True,
            controller=True,
            complete_lines=verbosity > 0,  # xdist -v: "[gw0] PASSED ..." lines
        )
        return Progress(Tracker(NullSink(), worker, scrub), view, Tail(path, view.feed).start())
    view = View(terminal, in_place=in_place)

    class _Direct:
        def emit(self, event: dict[str, Any]) -> None:
            view.feed(event)

    return Progress(Tracker(_Direct(), worker, scrub), view)
