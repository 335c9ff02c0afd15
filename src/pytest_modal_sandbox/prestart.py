"""Concurrent start: session- and module-scoped sandbox fixtures start in the background.

After collection the plugin knows which ``sandbox_fixture(...)`` fixtures the selected tests
use.  Session-scoped ones all start at once, in threads, right after collection; module-scoped
ones start when the module's first test (or the test before it) begins, so at most the current
and the next module's sandboxes are alive, as without prestart.  Under xdist each worker does
the same for the tests it collected (``share="run"`` ones go through the normal claim, so the
run still gets one).

The fixture then takes the prestarted sandbox (waiting for it if it is still starting; a start
error is reported on each test that uses it, as without prestart).  A prestart is matched by
fixture, scope node and spec hash: if a ``pytest_modal_sandbox_spec`` hook changes the spec
(the hook needs the test's request, which does not exist before the test), the fixture starts
its own and the unused prestart ends with its scope.  Whatever no test took is ended when its
module or the session ends; nothing leaks if the run stops early.

:func:`obtain` is how every sandbox fixture gets its sandbox, prestarted or not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .errors import SpecError
from .fixtures import SPEC_ATTR
from .sandbox import Sandbox
from .spec import SandboxSpec, spec_from_fields

if TYPE_CHECKING:
    from .manager import SandboxManager
    from .progress import Progress
    from .reporting.hooks import Reporting

__all__ = ["Prestarter", "obtain"]


PRESTART_KEY = pytest.StashKey["Prestarter"]()
MAX_PARALLEL = 16
PRESTART_SCOPES = ("session", "module")


class _Cancelled(Exception):
    """Raised in a prestart thread once the session ended: the sandbox is not needed."""


@dataclass
class Entry:
    """One prestarted sandbox: a fixture instance (fixture key + scope node)."""

    key: str
    node: str  # "" for session scope, the module's node id for module scope
    fixture: str
    scope: str
    share: str
    spec: SandboxSpec
    future: Future[Sandbox] = field(default_factory=Future)
    claimed: bool = False
    cancelled: bool = False
    sandbox: Sandbox | None = None  # once created (before it is ready)
    finished: Sandbox | None = None  # once ready
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.key, self.node, self.spec.spec_hash)

    @property
    def test(self) -> str:
        """The label the manager tags it with (the same as the fixture's own start)."""
        return f"{self.fixture}@{self.node or 'session'}"


def label_for(fixture: str, scope: str, node: str) -> str:
    if scope == "function":
        return f"{fixture} ({node})"
    return f"{fixture} ({scope}{' ' + node if node and scope != 'session' else ''})"


def _module_id(item: pytest.Item) -> str:
    module = item.getparent(pytest.Module)
    return module.nodeid if module is not None else ""


def _skipped(item: pytest.Item) -> bool:
    if item.get_closest_marker("skip") is not None:
        return True
    try:
        from _pytest.skipping import evaluate_skip_marks

        return evaluate_skip_marks(item) is not None
    except Exception:  # a skipif that cannot be evaluated here: pytest will report it
        return False


def _param_fields(item: pytest.Item, name: str) -> dict[str, Any] | None:
    """Fields from indirect parametrization of fixture ``name``; None if not usable."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or name not in callspec.params:
        return {}
    param = callspec.params[name]
    if isinstance(param, SandboxSpec):
        return param.as_fields()
    if isinstance(param, Mapping):
        return dict(param)
    return None


class Prestarter:
    """Plans and runs the background starts of one process."""

    def __init__(
        self,
        config: pytest.Config,
        manager: SandboxManager,
        progress: Progress,
        reporting: Reporting,
    ) -> None:
        self.config = config
        self.manager = manager
        self.progress = progress
        self.reporting = reporting
        self.entries: dict[tuple[str, str, str], Entry] = {}  # (key, node, spec hash)
        self._modules: dict[str, list[Entry]] = {}  # module node id -> its planned entries
        self._started_modules: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- planning --------------------------------------------------------------------------

    def plan(self, items: Iterable[pytest.Item]) -> list[Entry]:
        """Every session/module sandbox fixture instance the (non-skipped) items use."""
        from .plugin import image_override

        planned: dict[tuple[str, str, str], Entry] = {}
        for item in items:
            info = getattr(item, "_fixtureinfo", None)
            if info is None or _skipped(item):
                continue
            for name in getattr(item, "fixturenames", ()):
                defs = info.name2fixturedefs.get(name)
                if not defs:
                    continue
                fixturedef = defs[-1]  # the closest definition is the one the test gets
                meta = getattr(fixturedef.func, SPEC_ATTR, None)
                if meta is None or fixturedef.scope not in PRESTART_SCOPES:
                    continue
                fields, share, defined_in = meta
                node = "" if fixturedef.scope == "session" else _module_id(item)
                key = f"{defined_in}:{name}"
                extra = _param_fields(item, name)
                if extra is None:
                    continue
                try:
                    spec = image_override(self.config, spec_from_fields({**fields, **extra}))
                except SpecError:
                    continue  # reported by the fixture, on the tests that use it
                entry = Entry(key, node, name, fixturedef.scope, share, spec)
                planned.setdefault(entry.ident, entry)  # one per parametrization
        return list(planned.values())

    def start_session(self, items: list[pytest.Item]) -> None:
        """After collection: start the session-scoped ones; remember the module-scoped."""
        for entry in self.plan(items):
            if entry.scope == "module":
                self._modules.setdefault(entry.node, []).append(entry)
            else:
                self._submit(entry)

    def start_modules(self, *items: pytest.Item | None) -> None:
        """A test begins: its module's and the next test's module's sandboxes start."""
        for item in items:
            if item is None:
                continue
            module = _module_id(item)
            if module in self._started_modules:
                continue
            self._started_modules.add(module)
            for entry in self._modules.get(module, []):
                self._submit(entry)

    def _submit(self, entry: Entry) -> None:
        with self._lock:
            if self._closed or entry.ident in self.entries:
                return
            self.entries[entry.ident] = entry
            if self._pool is None:
                self._pool = ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="pms-prestart")
            pool = self._pool
        self.reporting.scrubber.add(entry.spec.secret_values())
        pool.submit(self._run, entry)

    def _run(self, entry: Entry) -> None:
        def created(sb: Sandbox) -> None:
            entry.sandbox = sb
            if entry.cancelled:
                raise _Cancelled(f"prestart of {entry.test} cancelled: the session ended")
            self.config.hook.pytest_modal_sandbox_created(sandbox=sb)

        try:
            sb = start_tracked(
                self.manager,
                self.progress,
                self.reporting,
                entry.spec,
                fixture=entry.fixture,
                scope=entry.scope,
                node=entry.node,
                test=entry.test,
                share=entry.share,
                key=entry.key,
                on_created=created,
                cancelled=lambda: entry.cancelled,
            )
        except BaseException as exc:
            entry.future.set_exception(exc)
            return
        with entry.lock:
            cancelled = entry.cancelled
            entry.finished = sb
        if cancelled:
            self._discard(entry, sb)
        entry.future.set_result(sb)

    # -- pytest hooks (this object is registered as a plugin) ---------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.start_session(list(session.items))
        self.progress.pump()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        self.start_modules(item, nextitem)
        try:
            return (yield)
        finally:
            module = _module_id(item)
            if nextitem is None or _module_id(nextitem) != module:
                self.finish_node(module)  # its module-scoped fixtures are torn down by now

    def pytest_sessionfinish(self) -> None:
        self.shutdown()

    # -- the fixture's side ------------------------------------------------------------------

    def claim(self, key: str, node: str, spec: SandboxSpec) -> Entry | None:
        """The prestart for this fixture instance, if there is one with this spec.

        One with another spec (a ``pytest_modal_sandbox_spec`` hook changed it; or another
        parametrization, still to come) stays until its scope ends: see :meth:`finish_node`.
        """
        with self._lock:
            entry = self.entries.get((key, node, spec.spec_hash))
            if entry is None or entry.claimed or entry.cancelled:
                return None
            entry.claimed = True
            return entry

    def finish_node(self, node: str) -> None:
        """A module is done: end the prestarts for it that no test took."""
        with self._lock:
            entries = [e for e in self.entries.values() if e.node == node and not e.claimed]
        for entry in entries:
            self._cancel(entry)

    # -- the end ---------------------------------------------------------------------------

    def _cancel(self, entry: Entry) -> None:
        with entry.lock:
            entry.cancelled = True
            done = entry.finished
        if done is not None:
            self._discard(entry, done)
        elif entry.sandbox is not None and entry.share != "run":
            # created, still waiting for readiness: ending it makes that wait fail at once
            try:
                entry.sandbox.terminate()
            except Exception:
                pass

    def _discard(self, entry: Entry, sb: Sandbox) -> None:
        try:
            self.manager.finish(sb, share=entry.share, test=entry.test)  # type: ignore[arg-type]
        except Exception:
            pass

    def shutdown(self, timeout: float = 30.0) -> None:
        """End every prestart nobody took (a run that ended early leaks nothing)."""
        with self._lock:
            self._closed = True
            # untaken ones, and taken ones whose fixture stopped waiting (Ctrl-C)
            entries = [e for e in self.entries.values() if not e.claimed or not e.future.done()]
            pool = self._pool
        for entry in entries:
            self._cancel(entry)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + timeout
            for entry in entries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry.future.exception(timeout=remaining)
                except Exception:  # cancelled before it ran, or still running past the deadline
                    pass


def start_tracked(
    manager: SandboxManager,
    progress: Progress,
    reporting: Reporting,
    spec: SandboxSpec,
    *,
    fixture: str,
    scope: str,
    node: str,
    test: str,
    share: str,
    key: str,
    on_created: Callable[[Sandbox], None] | None,
    cancelled: Callable[[], bool] | None = None,
) -> Sandbox:
    """``manager.start`` with progress events and a timing record for the summary."""
    track = progress.tracker.start(label_for(fixture, scope, node))

    def created(sb: Sandbox) -> None:
        track.created(sb.id)
        if on_created is not None:
            on_created(sb)

    try:
        sb = manager.start(spec, test=test, share=share, key=key, on_created=created)  # type: ignore[arg-type]
    except BaseException as exc:
        if isinstance(exc, _Cancelled) or (cancelled is not None and cancelled()):
            track.cancelled()  # ended on purpose (the session is over): not a failure
        else:
            track.failed(exc)
            reporting.start_failed(track.sandbox_id, track.label, exc)
        raise
    track.ready(sb.id)
    reporting.track(
        sb,
        fixture=fixture,
        scope=scope,
        share=share,
        test=test,
        label=track.label,
        created_here=track.created_here,
    )
    if track.created_here:
        reporting.started(sb, track.label)
    return sb


def obtain(
    request: pytest.FixtureRequest,
    manager: SandboxManager,
    spec: SandboxSpec,
    *,
    test: str,
    share: str,
    key: str,
    on_created: Callable[[Sandbox], None] | None = None,
) -> Sandbox:
    """The sandbox for this fixture request: the prestarted one if there is one, else a new
    start - either way with live progress and what the reports need."""
    from .reporting.hooks import reporting_of

    config = request.config
    reporting = reporting_of(config)
    reporting.scrubber.add(spec.secret_values())
    progress = reporting.progress
    scope = request.scope
    node = "" if scope == "session" else request.node.nodeid
    prestarter = config.stash.get(PRESTART_KEY, None)
    entry = prestarter.claim(key, node, spec) if prestarter is not None else None
    with progress.waiting():
        if entry is not None:
            return entry.future.result()
        return start_tracked(
            manager,
            progress,
            reporting,
            spec,
            fixture=request.fixturename or "sandbox",
            scope=scope,
            node=node,
            test=test,
            share=share,
            key=key,
            on_created=on_created,
        )
