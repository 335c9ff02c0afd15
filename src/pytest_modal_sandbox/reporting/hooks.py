"""What users see of their sandboxes in pytest's output: failure sections, secret scrubbing,
keep-on-failure, JUnit properties and the end-of-run summary.

One :class:`Reporting` plugin object per pytest process (registered by ``plugin.py``):

* ``pytest_runtest_makereport`` (outermost wrapper, so it sees the final report): for a test
  that used sandboxes it records JUnit properties, keeps the sandbox on failure, adds a section
  per sandbox to a failed report, attaches start timings for the summary, and scrubs secret
  values from everything in the report - before the terminal, JUnit or xdist see it;
* ``pytest_runtest_logreport`` (controller / only process): collects the timings;
* ``pytest_terminal_summary``: sweeps, then counts and times per backend.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from ..sandbox import Sandbox
from .diagnostics import describe
from .keep import keep, keep_seconds, reach
from .scrub import Scrubber
from .summary import StartRecord, Summary, summary_lines

if TYPE_CHECKING:
    from ..manager import SandboxManager
    from ..progress import Progress
    from ..settings import Settings

__all__ = ["TIMINGS_ATTR", "Reporting", "Scrubber", "reporting_of"]

TIMINGS_ATTR = "modal_sandbox_starts"
REPORTING_KEY = pytest.StashKey["Reporting"]()
JUNIT_PREFIX = "modal_sandbox"


@dataclass
class Tracked:
    """What a report needs to know about a sandbox beyond the handle."""

    fixture: str
    scope: str
    share: str
    test: str
    label: str
    created_here: bool = True  # False: a share="run" sandbox another process started


def reporting_of(config: pytest.Config) -> Reporting:
    return config.stash[REPORTING_KEY]


def _marker_secrets(item: pytest.Item) -> list[str]:
    values: list[str] = []
    for mark in item.iter_markers("sandbox"):
        for secret in mark.kwargs.get("secrets", ()) or ():
            if isinstance(secret, Mapping):
                values += [v for v in secret.values() if isinstance(v, str)]
    return values


class Reporting:
    def __init__(
        self,
        config: pytest.Config,
        manager: SandboxManager,
        settings: Settings,
        progress: Progress,
    ) -> None:
        self.config = config
        self.manager = manager
        self.settings = settings
        self.progress = progress
        self.scrubber = Scrubber()
        self.tracked: dict[str, Tracked] = {}  # sandbox id -> how it was obtained
        self.by_item: dict[str, list[tuple[str, Sandbox]]] = {}  # function-scoped, per test
        self.kept: dict[str, float] = {}  # sandbox id -> until
        self._pending: list[StartRecord] = []  # not yet attached to a report
        self.starts: list[StartRecord] = []  # controller / only process: all of the run's
        config.stash[REPORTING_KEY] = self

    # -- fed by obtain() / prestart (any thread) ---------------------------------------------

    def track(
        self,
        sb: Sandbox,
        *,
        fixture: str,
        scope: str,
        share: str,
        test: str,
        label: str,
        created_here: bool = True,
    ) -> None:
        self.tracked[sb.id] = Tracked(fixture, scope, share, test, label, created_here)
        if scope == "function":
            self.by_item.setdefault(test, []).append((fixture, sb))

    def started(self, sb: Sandbox, label: str) -> None:
        t = sb.timings
        self._pending.append(
            StartRecord(
                sb.id, sb.backend, label, self.manager.worker, t.create_seconds, t.ready_seconds
            )
        )

    def start_failed(self, sandbox_id: str, label: str, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self._pending.append(
            StartRecord(
                sandbox_id,
                self.manager.backend_name,
                label,
                self.manager.worker,
                None,
                None,
                error=self.scrubber.text(first)[:200],
            )
        )

    def _drain(self) -> list[StartRecord]:
        records, self._pending = self._pending, []
        return records

    # -- reports -----------------------------------------------------------------------------

    def sandboxes_of(self, item: pytest.Item) -> list[tuple[str, Sandbox]]:
        """The sandboxes a test used: its fixture values, and any function-scoped sandbox
        fixture it requested dynamically (``request.getfixturevalue``)."""
        found: dict[str, tuple[str, Sandbox]] = {}
        funcargs = getattr(item, "funcargs", None) or {}
        for name, value in funcargs.items():
            if isinstance(value, Sandbox):
                found.setdefault(value.id, (name, value))
        for name, sb in self.by_item.get(item.nodeid, []):
            found.setdefault(sb.id, (name, sb))
        return list(found.values())

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        self.scrubber.add(_marker_secrets(item))
        try:
            self._annotate(item, call, report)
        except Exception as exc:  # diagnostics must never turn into an INTERNALERROR
            report.sections.append(("modal-sandbox", f"(diagnostics failed: {exc!r})"))
        records = self._drain()
        if records:
            setattr(report, TIMINGS_ATTR, [r.as_dict() for r in records])
        if report.when == "teardown":
            self.by_item.pop(item.nodeid, None)
        self.scrub_report(report, item)
        return report

    def _annotate(self, item: pytest.Item, call: pytest.CallInfo[None], report: Any) -> None:
        used = self.sandboxes_of(item)
        if not used:
            return
        if report.when == "setup" and report.passed:
            item.user_properties.extend(self.junit_properties(used))
            report.user_properties = list(item.user_properties)
        if not report.failed:
            return
        call_seconds = call.duration if report.when == "call" else None
        for fixture, sb in used:
            tracked = self.tracked.get(sb.id)
            scope = tracked.scope if tracked else "function"
            extra = ""
            if report.when in ("setup", "call") and self._should_keep(sb, tracked):
                extra = self._keep(sb, tracked)
            text = describe(
                sb,
                fixture=fixture,
                scope=scope,
                log_lines=self.settings.log_lines,
                test_seconds=call_seconds,
                attached=tracked is not None and not tracked.created_here,
                extra=extra,
                scrub=self.scrubber.text,
            )
            report.sections.append((f"modal-sandbox: {fixture} {sb.id}", text))

    def _should_keep(self, sb: Sandbox, tracked: Tracked | None) -> bool:
        return (
            self.settings.keep_on_failure > 0
            and tracked is not None
            and tracked.share == "function"
            and not sb.terminated
            and sb.id not in self.kept
        )

    def _keep(self, sb: Sandbox, tracked: Tracked | None) -> str:
        seconds = keep_seconds(sb, self.settings.keep_on_failure)
        if seconds <= 1:
            return "not kept: its timeout is (almost) over"
        try:
            until = keep(sb, seconds)
        except Exception as exc:
            return f"could not keep it alive: {exc}"
        self.kept[sb.id] = until
        assert tracked is not None
        self.manager.kept(sb, share=tracked.share, test=tracked.test)
        return reach(sb, until, self.manager.run_id)

    def is_kept(self, sb: Sandbox) -> bool:
        return sb.id in self.kept

    def junit_properties(self, used: Iterable[tuple[str, Sandbox]]) -> list[tuple[str, str]]:
        """``modal_sandbox.<fixture>.id`` / ``.backend`` / ``.tunnel.<port>`` per sandbox.

        Tunnel endpoints are listed when a JUnit file is written (``--junitxml``) or the test
        already asked for them: on Modal, the first lookup is a round trip."""
        props: list[tuple[str, str]] = []
        junit = bool(getattr(self.config.option, "xmlpath", None))
        for fixture, sb in used:
            base = f"{JUNIT_PREFIX}.{fixture}"
            props += [(f"{base}.id", sb.id), (f"{base}.backend", sb.backend)]
            try:
                endpoints = sb.tunnels if junit else dict(sb._endpoints)
            except Exception as exc:
                props.append((f"{base}.tunnels", f"unavailable: {exc}"))
                continue
            for port, ep in sorted(endpoints.items()):
                props.append((f"{base}.tunnel.{port}", ep.url))
        return props

    def scrub_report(self, report: Any, item: pytest.Item | None = None) -> None:
        """Replace every known secret value in the report (and the test's properties)."""
        s = self.scrubber
        if not s:
            return
        report.sections = [(s.text(title), s.text(text)) for title, text in report.sections]
        report.user_properties = [(k, s.deep(v)) for k, v in report.user_properties]
        if item is not None:
            item.user_properties[:] = [(k, s.deep(v)) for k, v in item.user_properties]
        longrepr = report.longrepr
        if longrepr is None:
            return
        if isinstance(longrepr, str):
            report.longrepr = s.text(longrepr)
            return
        report.longrepr = longrepr = s.deep(longrepr)
        with contextlib.suppress(Exception):
            if s.found_in(str(longrepr)):  # a shape the walk did not reach: flatten it
                report.longrepr = s.text(str(longrepr))

    # -- the run's owner ---------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        records = getattr(report, TIMINGS_ATTR, None)
        if records and self.manager.owns_run:
            self.starts += [StartRecord.from_dict(r) for r in records]
        with self.progress.pytest_writes():  # the terminal reporter writes in here
            return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logstart(self) -> Generator[None, None, None]:
        with self.progress.pytest_writes():
            result = yield
        self.progress.tests_started()
        return result

    def pytest_runtest_logfinish(self) -> None:
        self.progress.pump()

    def summary(self, *, grace: float = 5.0) -> Summary:
        """Counts from the ledger, timings from the reports, leaks from the backend."""
        from ..lifecycle import RUN_TAG

        manager = self.manager
        s = Summary(manager.backend_name)
        s.add_ledger(manager.ledger.entries())
        for sid, until in self.kept.items():
            s.kept[sid] = until
        self.starts += self._drain()
        s.starts = list(self.starts)
        if not s.created and not s.starts:
            return s
        deadline = time.monotonic() + grace
        while True:
            try:
                listed = [i for i in manager.backend.list({RUN_TAG: manager.run_id})]
            except Exception:
                break
            from .keep import kept_until

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

    def pytest_sessionfinish(self) -> None:
        self.progress.close()

    def pytest_unconfigure(self) -> None:
        self.progress.close()  # again: sessionfinish does not run if the session failed to start

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from ..plugin import _finish_run

        if not self.manager.owns_run:
            return
        _finish_run(self.config)  # sweep first, so "leaked" means what the sweep left
        self.write_summary(terminalreporter)


def install(config: pytest.Config, manager: SandboxManager, settings: Settings) -> Reporting:
    """Create and register this process's progress, reporting and prestart machinery."""
    from .. import progress as progress_mod
    from ..prestart import PRESTART_KEY, Prestarter

    holder: list[Reporting] = []
    progress = progress_mod.setup(
        config,
        role=manager.role,
        worker=manager.worker,
        run_dir=manager.runs / f"{manager.run_id}.d",
        mode=settings.progress,
        scrub=lambda text: holder[0].scrubber.text(text) if holder else text,
    )
    reporting = Reporting(config, manager, settings, progress)
    holder.append(reporting)
    config.pluginmanager.register(reporting, "modal_sandbox_reporting")
    if settings.prestart and manager.role != "controller" and not config.option.collectonly:
        prestarter = Prestarter(config, manager, progress, reporting)
        config.stash[PRESTART_KEY] = prestarter
        config.pluginmanager.register(prestarter, "modal_sandbox_prestart")
    return reporting
