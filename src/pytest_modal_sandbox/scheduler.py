"""Sandboxes started ahead of the tests that need them, and handed to exactly those tests.

One scheduler per process that runs tests.  From collection and from this process's queue of
pending tests (in run order; under xdist, the tests the controller has sent this worker) it knows
which sandbox fixture instances (:class:`~.fixtures.FixtureInstance`) are coming, and starts
them in background threads:

* session-scoped ones right after collection (every one the collected tests use);
* module-, class- and package-scoped ones once a test using them is the current or next one;
* function-scoped ones for the coming tests, at most ``ahead`` of them started and not taken.

A fixture setup asks :meth:`Scheduler.obtain` for its instance and gets the sandbox started ahead
for exactly that instance — same fixture, scope node and spec — waiting for it if it is still
starting; with none, the sandbox is started there and then.  A sandbox nobody will take is ended
as soon as that is known: its test is over (skipped, deselected, an earlier fixture failed), its
module is over, the process's queue no longer holds its test, or the run stops (``-x``,
``--maxfail``, Ctrl-C).  Ending goes through ``discard``, which must not block.

A ``pytest_modal_sandbox_spec`` hook runs at setup (it needs the request).  When it changes the
spec, the sandbox started ahead is not that test's: :meth:`spec_changed` discards it and stops
starting that fixture ahead in this process (so a hook that changes every spec wastes at most
``ahead`` starts per fixture).  ``ahead=0`` starts nothing ahead.

A quota (Modal's limit on sandboxes at once) is for the tests that run now: a start made ahead
that the backend refuses for a quota gives up at once (``quota_wait=0``), and from then on this
process starts nothing ahead and ends what it started ahead for later tests, so those slots go
to the current test; a setup whose start made ahead was refused starts its sandbox itself,
waiting for a slot as any start does.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from . import interruptible
from .errors import QuotaExceeded
from .fixtures import FixtureInstance, ImageOverride, instances_of_item
from .sandbox import Sandbox

__all__ = ["Scheduler", "Starter"]

MAX_PARALLEL = 16
LOOKAHEAD_ITEMS = 200  # how far down the queue to look for function-scoped instances
WIDE_WINDOW = 2  # module/class/package: the current test's and the next one's


class Cancelled(Exception):
    """Raised in a start made ahead once it is not needed any more."""


class Starter(Protocol):
    def __call__(
        self,
        instance: FixtureInstance,
        *,
        ahead: bool,
        on_created: Callable[[Sandbox], None] | None = None,
        cancelled: Callable[[], bool] = ...,
    ) -> Sandbox:
        """A ready sandbox for ``instance`` (with events, hooks and progress)."""
        ...


@dataclass(eq=False)
class Entry:
    """A start made ahead for one fixture instance."""

    instance: FixtureInstance
    future: Future[Sandbox] = field(default_factory=Future)
    claimed: bool = False
    cancelled: bool = False
    created: Sandbox | None = None  # once it exists (not yet ready)
    sandbox: Sandbox | None = None  # once ready
    raised: list[warnings.WarningMessage] = field(default_factory=list)  # warnings of its start
    lock: threading.Lock = field(default_factory=threading.Lock)


class StartWarnings:
    """Warnings a start made ahead raises (an image that fell back to the host, say), kept for
    the setup that takes its sandbox: pytest records warnings per test phase, and a start made
    ahead runs outside any.  Installed as ``warnings.showwarning`` while starts run ahead;
    warnings of other threads pass through."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.previous: Callable[..., None] | None = None

    def install(self) -> None:
        if self.previous is None:
            self.previous = warnings.showwarning
            warnings.showwarning = self.show

    def uninstall(self) -> None:
        if self.previous is not None and warnings.showwarning == self.show:
            warnings.showwarning = self.previous
        self.previous = None

    def show(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:  # fmt: skip
        kept = getattr(self.local, "kept", None)
        if kept is not None:
            kept.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
        elif self.previous is not None:
            self.previous(message, category, filename, lineno, file, line)

    @contextlib.contextmanager
    def keeping(self, into: list[warnings.WarningMessage]) -> Iterator[None]:
        self.local.kept = into
        try:
            yield
        finally:
            self.local.kept = None

    @staticmethod
    def replay(kept: Iterable[warnings.WarningMessage]) -> None:
        """Raise them again, here (in the setup that takes the sandbox)."""
        for w in kept:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def may_run(item: pytest.Item) -> bool:
    """False for a test that is skipped before its setup for sure (``skip``, ``skipif`` with
    a true non-string condition, ``xfail(run=False)``); string conditions count as "may run"."""
    if item.get_closest_marker("skip") is not None:
        return False
    for name in ("skipif", "xfail"):
        for mark in item.iter_markers(name):
            if name == "xfail" and mark.kwargs.get("run", True):
                continue
            conditions = mark.args
            if "condition" in mark.kwargs:
                conditions = (mark.kwargs["condition"],)
            if not conditions or any(not isinstance(c, str) and c for c in conditions):
                return False
    return True


def _wide_nodes(instances: Iterable[FixtureInstance]) -> set[str]:
    return {i.node for i in instances if i.scope not in ("function", "session")}


class Scheduler:
    def __init__(
        self,
        start: Starter,
        discard: Callable[[Sandbox, FixtureInstance], None],
        *,
        ahead: int,
        wide: bool = True,
        images: ImageOverride,
        upcoming: Callable[[pytest.Item, pytest.Item | None], Sequence[pytest.Item]],
        # -> the tests this process runs after the first, in order (a bounded look ahead)
        on_taken: Callable[[FixtureInstance], None] = lambda instance: None,
        clones: Callable[[pytest.Item], list[FixtureInstance]] = lambda item: [],
        # -> the clones (snapshot_of=) it will ask for, once their templates' snapshots exist
    ) -> None:
        self.start = start
        self.discard = discard
        self.ahead = ahead
        self.wide = wide
        self.images = images
        self.upcoming = upcoming
        self.on_taken = on_taken
        self.clones = clones
        self.entries: dict[tuple[str, str, str], Entry] = {}
        self.no_ahead: set[str] = set()  # fixtures a spec hook changed: started at setup only
        self._instances: dict[str, list[FixtureInstance]] = {}  # test node id -> its instances
        self._window: list[pytest.Item] = []  # the current test, then the coming ones
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[Future[None]] = []  # starts not finished yet, taken or not
        self._warnings = StartWarnings()
        self._lock = threading.RLock()
        self._closed = False
        self._quota_full = False  # a start made ahead was refused for a quota: no more

    # -- what is coming --------------------------------------------------------------------

    def instances(self, item: pytest.Item) -> list[FixtureInstance]:
        found = self._instances.get(item.nodeid)
        if found is None:
            found = list(instances_of_item(item, self.images)) if may_run(item) else []
            self._instances[item.nodeid] = found
        if not may_run(item):
            return found
        # not kept: a clone's spec is known once its template's snapshot is taken
        return found + self.clones(item)

    def collection_finished(self, items: Sequence[pytest.Item]) -> None:
        """Start the session-scoped instances the collected tests use."""
        if not self.wide:
            return
        for item in items:
            for instance in self.instances(item):
                if instance.scope == "session":
                    self._submit(instance)

    def test_starting(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """``item`` begins: plan from it and the tests queued after it."""
        if not self.wide and self.ahead <= 0:
            return
        window = [item, *self.upcoming(item, nextitem)]
        queued = {i.nodeid for i in window}
        with self._lock:
            self._window = window
            gone = [
                e
                for e in self.entries.values()
                if e.instance.scope == "function"
                and not e.claimed
                and e.instance.node not in queued
            ]
        for entry in gone:  # its test left this process's queue (xdist moved it elsewhere)
            self._cancel(entry)
        for near in window[:WIDE_WINDOW] if self.wide else ():
            for instance in self.instances(near):
                if instance.scope != "function":
                    self._submit(instance)
        self._refill()

    def test_finished(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """``item`` is over: what was started for it and not taken ends now, and so do the
        module/class/package instances whose node is done (pytest tore them down already)."""
        if not self.wide and self.ahead <= 0:
            return
        done = {item.nodeid}
        done |= _wide_nodes(self.instances(item)) - (
            _wide_nodes(self.instances(nextitem)) if nextitem is not None else set()
        )
        with self._lock:
            self._window = [i for i in self._window if i is not item]
            finished = [e for e in self.entries.values() if e.instance.node in done]
            for entry in finished:  # a later setup of the same node may be started anew
                del self.entries[entry.instance.ident]
        for entry in finished:
            if not entry.claimed or not entry.future.done():  # or its setup stopped waiting
                self._cancel(entry)
        self._refill()

    def _refill(self) -> None:
        """Start the coming function-scoped instances, up to ``ahead`` not yet taken."""
        if self.ahead <= 0:
            return
        with self._lock:
            window = list(self._window)
        for item in window:
            for instance in self.instances(item):
                if instance.scope != "function":
                    continue
                if self._waiting_ahead() >= self.ahead:
                    return
                self._submit(instance)

    def _waiting_ahead(self) -> int:
        with self._lock:
            return sum(
                1
                for e in self.entries.values()
                if e.instance.scope == "function" and not e.claimed and not e.cancelled
            )

    # -- starting ahead ----------------------------------------------------------------------

    def _submit(self, instance: FixtureInstance) -> None:
        with self._lock:
            if (
                self._closed
                or self._quota_full
                or instance.ident in self.entries
                or instance.fixture in self.no_ahead
            ):
                return
            entry = Entry(instance)
            self.entries[instance.ident] = entry
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="pms-ahead")
                self._warnings.install()
            task = self._pool.submit(self._run, entry)
            self._tasks = [t for t in self._tasks if not t.done()] + [task]

    def _run(self, entry: Entry) -> None:
        if entry.cancelled:
            entry.future.set_exception(Cancelled("not needed any more"))
            return

        # A share="run" sandbox is never abandoned half-made: other workers may be attached
        # and waiting for it. Once made, discard() lets go of it as the run's sharing says.
        abandon = entry.instance.share != "run"

        def created(sb: Sandbox) -> None:
            entry.created = sb
            if entry.cancelled and abandon:
                raise Cancelled(f"{entry.instance.label}: not needed any more")

        try:
            with self._warnings.keeping(entry.raised):
                sb = self.start(
                    entry.instance,
                    ahead=True,
                    on_created=created,
                    cancelled=lambda: entry.cancelled and abandon,
                )
        except BaseException as exc:
            entry.future.set_exception(exc)
            if isinstance(exc, QuotaExceeded):
                self._quota_refused()
            return
        with entry.lock:
            cancelled = entry.cancelled
            entry.sandbox = sb
        if cancelled:
            self.discard(sb, entry.instance)
        entry.future.set_result(sb)

    def _quota_refused(self) -> None:
        """Stop starting ahead, and free the slots of what was started ahead and not taken
        (but the current test's: it is about to take them)."""
        with self._lock:
            self._quota_full = True
            now = {i.ident for i in self.instances(self._window[0])} if self._window else set()
            untaken = [
                e for e in self.entries.values() if not e.claimed and e.instance.ident not in now
            ]
        for entry in untaken:
            self._cancel(entry)

    def _cancel(self, entry: Entry) -> None:
        with entry.lock:
            if entry.cancelled:
                return
            entry.cancelled = True
            ready = entry.sandbox
        if ready is not None:
            self.discard(ready, entry.instance)
        elif entry.created is not None and entry.instance.share != "run":
            # created, waiting for readiness: ending it makes that wait fail at once
            self.discard(entry.created, entry.instance)

    # -- the fixture's side ----------------------------------------------------------------

    def obtain(self, instance: FixtureInstance) -> Sandbox:
        """The sandbox for this setup: the one started ahead for it, else a new start."""
        with self._lock:
            entry = self.entries.get(instance.ident)
            if entry is not None and (entry.claimed or entry.cancelled):
                entry = None
            if entry is not None:
                entry.claimed = True
        if entry is None:
            return self.start(instance, ahead=False)
        self._refill()  # a place in the bound is free
        try:
            sb = interruptible.result(entry.future)
        except QuotaExceeded:  # refused at once, ahead: this setup waits for a slot itself
            return self.start(instance, ahead=False)
        finally:
            StartWarnings.replay(entry.raised)
        self.on_taken(instance)
        return sb

    def spec_changed(self, instance: FixtureInstance) -> None:
        """A spec hook changed ``instance``'s spec at setup: what was started ahead for its
        fixture is not what its tests get."""
        with self._lock:
            self.no_ahead.add(instance.fixture)
            wasted = [
                e
                for e in self.entries.values()
                if e.instance.fixture == instance.fixture and not e.claimed
            ]
        for entry in wasted:
            self._cancel(entry)

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self, timeout: float = 30.0) -> None:
        """End every start nobody took, and wait (bounded) for those still running to end."""
        with self._lock:
            self._closed = True
            # untaken ones, and taken ones whose setup stopped waiting (Ctrl-C)
            entries = [e for e in self.entries.values() if not e.claimed or not e.future.done()]
            pool, tasks = self._pool, list(self._tasks)
        for entry in entries:
            self._cancel(entry)
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        self._warnings.uninstall()
        deadline = time.monotonic() + timeout
        for task in tasks:  # ended ones included: their events are the ledger's
            try:
                task.exception(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # cancelled before it ran, or still running past the deadline
                pass
