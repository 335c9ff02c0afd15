"""The plugin's state for one pytest process, as one object registered as a pytest plugin.

xdist's ``DSession`` is the model: :class:`Session` is built in ``pytest_configure`` when
sandboxes are enabled, and owns everything of this process's run — the settings, the
:class:`~.run.Run` (backend, ledger, sweeps), the secret scrubber, the reports, the scheduler,
the progress view and the clean-ups.  Code reaches it through one stash key
(:data:`~.fixtures.PROVIDER_KEY`; :func:`session_of`).

Roles: the *only process* (no xdist) or the xdist *controller* owns the run (run id, run lock,
ledger, sweeps); *workers* start sandboxes and send their events to it (``xdist.py``).  Every
event of the run ends up in :meth:`Session.consume` on the owner.  The end of the run (sweep,
then summary) happens exactly once, from whichever of its three triggers comes first.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import pytest

from . import xdist
from .errors import QuotaExceeded, SandboxError, SpecError
from .events import Event
from .fixtures import (
    PROVIDER_KEY,
    Declaration,
    FixtureInstance,
    error_origin,
    instance_of_request,
)
from .progress import make_view
from .reporting.keep import kept_until
from .reporting.reports import Reports, Use
from .reporting.starts import StartTable
from .reporting.summary import Summary, summary_lines
from .run import Role, Run
from .sandbox import Sandbox
from .scheduler import LOOKAHEAD_ITEMS, Cancelled, Scheduler
from .scrub import Scrubber
from .settings import Settings
from .spec import SandboxSpec
from .templates import Templates

__all__ = ["Session", "role_of", "session_of"]

CALL_REPORT_KEY = pytest.StashKey[pytest.TestReport]()


def role_of(config: pytest.Config) -> Role:
    if hasattr(config, "workerinput"):
        return "worker"
    if getattr(config.option, "dist", "no") != "no" and not config.option.collectonly:
        return "controller"
    return "standalone"


def session_of(config: pytest.Config) -> Session:
    """This process's session (sandboxes must be enabled)."""
    session = config.stash[PROVIDER_KEY]
    assert isinstance(session, Session)
    return session


class Session:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        from .backends import resolve_backend_name
        from .lifecycle.tags import new_run_id

        self.config = config
        self.settings = settings
        self.role = role_of(config)
        self.cleanups: list[Callable[[], object]] = []
        self.scrubber = Scrubber()
        self.starts = StartTable()
        self.attached: set[str] = set()  # share="run" sandboxes another process started
        self._start_numbers = itertools.count(1)
        self._finished = False
        self._positions: dict[int, int] = {}  # id(item) -> its place in the run's order
        given = xdist.worker_input(config)
        self._send = xdist.event_sender(config)
        worker = given.get("workerid", "main" if self.role == "standalone" else "controller")
        backend = given.get(xdist.BACKEND) or resolve_backend_name(settings.backend)
        options = settings.backend_options()
        if self.role == "worker":
            options.update(given.get(xdist.OPTIONS, {}))
        elif backend == "emulator":
            options.update(self._start_emulator())
        self.run = Run(
            role=self.role,
            run_id=given.get(xdist.RUN_ID) or new_run_id(),
            worker=worker,
            backend_name=backend,
            backend_options=options,
            log_lines=settings.log_lines,
            on_event=self.emit,
        )
        self.reports = Reports(config, settings, self.run, self.scrubber)
        self.templates = Templates(self.run, settings.images)
        self.view = make_view(
            config, settings.progress, owner=self.run.owns_run, controller=self.role == "controller"
        )
        self.scheduler: Scheduler | None = None
        if self.role != "controller" and not config.option.collectonly:
            ahead = settings.ahead_for(backend)
            self.scheduler = Scheduler(
                self.start,
                self.discard,
                ahead=ahead,
                wide=ahead > 0,
                images=settings.images,
                upcoming=self._upcoming,
                on_taken=self._taken,
                clones=self.templates.clones_of,
            )

    # -- configure and unconfigure -------------------------------------------------------------

    @classmethod
    def configure(cls, config: pytest.Config, settings: Settings) -> Session:
        """Build, register and start this process's session."""
        from .lifecycle.signals import install_sigint_handler, install_sigterm_handler

        session = cls(config, settings)
        config.stash[PROVIDER_KEY] = session
        config.pluginmanager.register(session, "modal_sandbox_session")
        config.pluginmanager.register(session.reports, "modal_sandbox_reports")
        session.cleanups.append(install_sigint_handler())
        if settings.sigterm:
            session.cleanups.append(install_sigterm_handler())
        if session.run.owns_run:
            session.run.begin_run()
            session.run.sweep_stale_runs()
        if session.role == "controller" and config.pluginmanager.hasplugin("xdist"):
            controller = xdist.XdistController(session.run, session.consume, session.worker_down)
            config.pluginmanager.register(controller, "modal_sandbox_xdist")
        return session

    def _start_emulator(self) -> dict[str, Any]:
        """One emulator for the whole run (workers reach it through ``workerinput``); it stops
        after the end-of-run sweep, terminating anything still running in it."""
        import secrets

        from .emulator import EmulatorProcess
        from .lifecycle.watchdog import kill_with_this_process

        token = (f"ak-{secrets.token_hex(8)}", f"as-{secrets.token_hex(8)}")
        try:
            emulator = EmulatorProcess(
                token_id=token[0],
                token_secret=token[1],
                # images as on the local backend: pull (default), host, or auto
                images=self.settings.local_images,
                host_images=self.settings.host_images,
                latency_ms=self.settings.emulator_latency_ms,  # Modal's costs, when asked
                start_latency_ms=self.settings.emulator_start_latency_ms,
            ).start()
        except SandboxError as exc:  # e.g. no bubblewrap: one clear line, not a traceback
            raise pytest.UsageError(f"--modal-sandbox=emulator: {exc}") from None
        self.cleanups.append(emulator.stop)
        if emulator.pid is not None:  # it must die with us, even if we are SIGKILLed
            self.cleanups.append(kill_with_this_process(emulator.pid))
        return {"server_url": emulator.url, "token_id": token[0], "token_secret": token[1]}

    def header(self) -> str:
        try:
            detail = self.run.backend.header()
        except Exception as exc:  # the header must not break the run; the fixtures will say why
            detail = f"{self.run.backend_name} (unavailable: {exc})"
        return f"modal-sandbox: {detail}; run {self.run.run_id}"

    # -- events: one channel from wherever they happen to the run's owner ------------------

    def emit(self, event: Event) -> None:
        """An event of this process: the owner consumes it, a worker sends it to its owner."""
        if self.run.owns_run:
            self.consume(event)
        elif self._send is not None:
            self._send(event)

    def consume(self, event: Event) -> None:
        """The run's owner: an event of any of its processes (any thread)."""
        self.run.record(event)
        state = self.starts.feed(event)
        if state is not None:
            self.view.show(state)

    def worker_down(self, worker: str, error: object) -> None:
        """Controller: a worker crashed; its own sandboxes end now."""
        self.run.worker_down(worker)
        self.say([f"worker {worker} went down ({error}); ending its sandboxes"])

    # -- a sandbox for a fixture ---------------------------------------------------------------

    def start(
        self,
        instance: FixtureInstance,
        *,
        ahead: bool,
        on_created: Callable[[Sandbox], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Sandbox:
        """Start ``instance``'s sandbox (here, or in a thread when ``ahead``), telling the
        owner each step; the ``created`` hook runs in the thread that starts it."""
        key = f"{self.run.worker}:{next(self._start_numbers)}"
        self.scrubber.add(instance.spec.secret_values())
        made: list[Sandbox] = []

        def created(sb: Sandbox) -> None:
            made.append(sb)
            if on_created is not None:
                on_created(sb)
            self.config.hook.pytest_modal_sandbox_created(sandbox=sb)

        def event(kind: str, sandbox_id: str = "", **more: Any) -> None:
            self.run.emit(
                kind,
                sandbox_id,
                share=instance.share,
                test=instance.test,
                start=key,
                label=instance.label,
                ahead=ahead,
                **more,
            )

        event("requested")
        try:
            sb = self.run.launch(
                instance.spec,
                test=instance.test,
                share=instance.share,
                key=instance.key,
                on_created=created,
                start=key,
                label=instance.label,
                quota_wait=0.0 if ahead else None,  # the scheduler retries it at setup
            )
        except BaseException as exc:
            sandbox_id = made[0].id if made else ""
            refused = ahead and isinstance(exc, QuotaExceeded)  # its setup starts it again
            if isinstance(exc, Cancelled) or cancelled() or refused:
                event("cancelled", sandbox_id)  # ended on purpose: not a failure
            else:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                event("failed", sandbox_id, error=self.scrubber.text(first)[:300])
            raise
        if not made:
            self.attached.add(sb.id)
        event("ready" if made else "attached", sb.id)
        return sb

    def discard(self, sb: Sandbox, instance: FixtureInstance) -> None:
        """A sandbox started ahead that no test will take: end it, without waiting."""
        self.run.finish(sb, share=instance.share, test=instance.test)

    def _taken(self, instance: FixtureInstance) -> None:
        self.run.emit("taken", "", share=instance.share, test=instance.test, ahead=True)

    def _upcoming(self, item: pytest.Item, nextitem: pytest.Item | None) -> Sequence[pytest.Item]:
        """The tests this process will run after ``item``, in order, as far as it knows (and
        not further than the scheduler looks)."""
        items = item.session.items
        after: list[pytest.Item] = [nextitem] if nextitem is not None else []
        if self.role == "worker":
            after += xdist.pending_items(self.config, items) or []
        elif id(item) in self._positions:
            i = self._positions[id(item)]
            after = items[i + 1 : i + 1 + LOOKAHEAD_ITEMS]
        return after[:LOOKAHEAD_ITEMS]

    def provide(
        self, request: pytest.FixtureRequest, declaration: Declaration
    ) -> Generator[Sandbox, None, None]:
        """A sandbox fixture's setup and teardown.  Spec problems and start failures are one
        clean error for the test (``pytest.fail(..., pytrace=False)``), with and without xdist."""
        error = ""
        try:
            instance = self._instance(request, declaration)
        except SpecError as exc:
            error = f"{error_origin(request, declaration, 'spec')}: {exc}"
        except SandboxError as exc:  # a clone's template failed to prepare or snapshot
            error = self.scrubber.text(f"{error_origin(request, declaration, 'start')}: {exc}")
        if error:  # failed outside the except block: no "during handling" chain in the report
            pytest.fail(error, pytrace=False)
        try:
            with self.view.waiting(instance.label):
                sb = self._obtain(instance)
                if declaration.prepare is not None:  # a template (templates.py)
                    try:
                        self.templates.prepare(sb, instance, declaration.prepare)
                    except BaseException:
                        self.run.finish(sb, share=instance.share, test=instance.test)
                        raise
        except SandboxError as exc:  # a daemon's log tail may hold a secret: scrubbed
            error = self.scrubber.text(f"{error_origin(request, declaration, 'start')}: {exc}")
        if error:
            pytest.fail(error, pytrace=False)
        self.reports.used(Use(sb, instance, attached=sb.id in self.attached))
        try:
            self.config.hook.pytest_modal_sandbox_ready(sandbox=sb)
            yield sb
        finally:
            # kept on failure: the sweeps end it after its deadline
            if not self.reports.is_kept(sb):
                report = None
                if request.scope == "function":
                    report = request.node.stash.get(CALL_REPORT_KEY, None)
                try:
                    if self.run.terminates(instance.share):  # not a worker letting go of it
                        self.config.hook.pytest_modal_sandbox_before_terminate(
                            sandbox=sb, report=report
                        )
                finally:
                    self.run.finish(sb, share=instance.share, test=instance.test)

    def _instance(
        self, request: pytest.FixtureRequest, declaration: Declaration
    ) -> FixtureInstance:
        """This setup's instance, after the ``pytest_modal_sandbox_spec`` hook.  When the hook
        changes the spec, what was started ahead for the instance is not this setup's."""
        if declaration.snapshot_of is not None:
            instance = self.templates.clone_instance(request, declaration)
        else:
            instance = instance_of_request(request, declaration, self.settings.images)
        hooked = self.config.hook.pytest_modal_sandbox_spec(spec=instance.spec, request=request)
        if hooked is None or hooked == instance.spec:
            return instance
        if not isinstance(hooked, SandboxSpec):
            raise SpecError(
                f"pytest_modal_sandbox_spec hook returned {hooked!r}, not a SandboxSpec or None"
            )
        if self.scheduler is not None:
            self.scheduler.spec_changed(instance)
        return instance.with_spec(hooked)

    def _obtain(self, instance: FixtureInstance) -> Sandbox:
        if self.scheduler is None:
            return self.start(instance, ahead=False)
        return self.scheduler.obtain(instance)

    # -- pytest hooks: the tests' run -----------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._positions = {id(item): i for i, item in enumerate(session.items)}
        if self.scheduler is not None:
            self.scheduler.collection_finished(session.items)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        if self.scheduler is None:
            return (yield)
        self.scheduler.test_starting(item, nextitem)
        try:
            return (yield)
        finally:
            self.scheduler.test_finished(item, nextitem)
            if item.session.shouldstop or item.session.shouldfail:
                self.scheduler.shutdown()  # -x, --maxfail: no test will take them

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when == "call":
            item.stash[CALL_REPORT_KEY] = report  # for before_terminate
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self) -> None:
        self.view.pytest_starts_test()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.role == "controller":  # the controller's main thread only relays: draw now
            self.view.between_tests()
        self.view.pytest_writes(report.nodeid)

    def pytest_runtest_logfinish(self) -> None:
        self.view.between_tests()

    @pytest.hookimpl(tryfirst=True)  # before the terminal's report, which can take seconds
    def pytest_keyboard_interrupt(self) -> None:
        from .lifecycle.signals import interrupt_seen

        interrupt_seen()  # pytest has it: no need to deliver it again

    # -- the end of the run: exactly once ------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, None, None]:
        if self.scheduler is not None:
            self.scheduler.shutdown()
        self.run.drain()  # this process's terminations are done (a worker's, before it reports)
        self.view.close()
        try:
            return (yield)
        finally:
            self.finish_run()  # after xdist has torn every worker down

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.run.owns_run:
            self.finish_run()  # sweep first, so "leaked" means what the sweep left
            self.write_summary(terminalreporter)

    def pytest_unconfigure(self) -> None:
        try:
            self.finish_run()  # sessionfinish does not run if the session failed to start
        finally:
            self.view.close()
            self.run.close()
            self.run.end_run()
            for cleanup in self.cleanups:
                with contextlib.suppress(Exception):
                    cleanup()

    def finish_run(self) -> None:
        """The end-of-run sweep, once, by the run's owner, after every worker is gone."""
        from .lifecycle.signals import interrupt_seen

        interrupt_seen()  # finishing anyway: a re-delivered interrupt would only cut cleanup
        if self._finished or not self.run.owns_run:
            return
        self._finished = True
        if self.scheduler is not None:
            self.scheduler.shutdown()
        try:
            self.run.sweep_run()
        finally:
            self.say(self.run.take_reports())

    def say(self, lines: list[str]) -> None:
        """Termination news for the terminal, one ``modal-sandbox:`` line each."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not lines:
            return
        self.view.settle()
        for line in lines:
            with contextlib.suppress(Exception):
                reporter.write_line(f"modal-sandbox: {line}")

    def summary(self, *, grace: float = 5.0) -> Summary:
        """Counts from the ledger, timings from the starts, leaks from the backend."""
        from .lifecycle.tags import RUN_TAG

        run = self.run
        s = Summary(run.backend_name)
        s.add_ledger(run.ledger.entries())
        s.kept.update(self.reports.kept)
        s.starts = self.starts.snapshot()
        s.taken = self.starts.taken
        if not s.created and not s.starts:
            return s
        deadline = time.monotonic() + grace
        while True:
            try:
                listed = list(run.backend.list({RUN_TAG: run.run_id}))
            except Exception:
                break
            left = [i.id for i in listed if i.id not in s.kept and kept_until(i.tags) is None]
            for info in listed:
                if info.id in s.kept and s.kept[info.id] is None:
                    s.kept[info.id] = kept_until(info.tags)
            # terminating is asynchronous: give what the sweep just ended a moment to go
            if not left or time.monotonic() > deadline:
                s.leaked = left
                break
            time.sleep(0.2)
        return s

    def write_summary(self, terminalreporter: Any) -> None:
        if int(getattr(self.config.option, "verbose", 0) or 0) < -1:
            return
        s = self.summary()
        if not s.created and not s.starts and not s.leaked:
            return
        terminalreporter.write_sep("-", "modal-sandbox summary")
        for line in summary_lines(s):
            terminalreporter.write_line(line)
