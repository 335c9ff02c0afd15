"""What a test's report says about its sandboxes: failure sections, JUnit properties,
keep-on-failure, and secret values scrubbed from all of it.

One :class:`Reports` plugin object per pytest process (registered by the session).  Its
``pytest_runtest_makereport`` is the outermost wrapper, so it sees the final report: for a test
that used sandboxes it records JUnit properties, keeps the sandbox on failure, adds a section
per sandbox to a failed report, and scrubs secret values from everything in the report —
before the terminal, JUnit or xdist see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from ..sandbox import Sandbox
from .diagnostics import describe
from .keep import keep, keep_seconds, reach

if TYPE_CHECKING:
    from ..fixtures import FixtureInstance
    from ..run import Run
    from ..scrub import Scrubber
    from ..settings import Settings

__all__ = ["Reports", "Use"]

JUNIT_PREFIX = "modal_sandbox"


@dataclass(frozen=True)
class Use:
    """A sandbox a fixture gave: which instance, and whether another process started it."""

    sandbox: Sandbox
    instance: FixtureInstance
    attached: bool = False  # a share="run" sandbox another process started


def _marker_secrets(item: pytest.Item) -> list[str]:
    values: list[str] = []
    for mark in item.iter_markers("sandbox"):
        for secret in mark.kwargs.get("secrets", ()) or ():
            if isinstance(secret, Mapping):
                values += [v for v in secret.values() if isinstance(v, str)]
    return values


class Reports:
    def __init__(
        self, config: pytest.Config, settings: Settings, run: Run, scrubber: Scrubber
    ) -> None:
        self.config = config
        self.settings = settings
        self.run = run
        self.scrubber = scrubber
        self.uses: dict[str, Use] = {}  # sandbox id -> how a fixture gave it
        self.by_item: dict[str, list[Use]] = {}  # function-scoped, per test
        self.kept: dict[str, float] = {}  # sandbox id -> until

    def used(self, use: Use) -> None:
        """A fixture gave this sandbox (at its setup)."""
        self.uses[use.sandbox.id] = use
        if use.instance.scope == "function":
            self.by_item.setdefault(use.instance.node, []).append(use)

    def uses_of(self, item: pytest.Item) -> list[Use]:
        """The sandboxes a test used: its fixture values, and any function-scoped sandbox
        fixture it requested dynamically (``request.getfixturevalue``)."""
        found: dict[str, Use] = {}
        funcargs = getattr(item, "funcargs", None) or {}
        for value in funcargs.values():
            if isinstance(value, Sandbox) and value.id in self.uses:
                found.setdefault(value.id, self.uses[value.id])
        for use in self.by_item.get(item.nodeid, []):
            found.setdefault(use.sandbox.id, use)
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
        if report.when == "teardown":
            self.by_item.pop(item.nodeid, None)
        self.scrub_report(report, item)
        return report

    def _annotate(self, item: pytest.Item, call: pytest.CallInfo[None], report: Any) -> None:
        used = self.uses_of(item)
        if not used:
            return
        if report.when == "setup" and report.passed:
            item.user_properties.extend(self.junit_properties(used))
            report.user_properties = list(item.user_properties)
        if not report.failed:
            return
        call_seconds = call.duration if report.when == "call" else None
        for use in used:
            sb, instance = use.sandbox, use.instance
            extra = ""
            if report.when in ("setup", "call") and self._should_keep(use):
                extra = self._keep(use)
            text = describe(
                sb,
                fixture=instance.fixture,
                scope=instance.scope,
                log_lines=self.settings.log_lines,
                test_seconds=call_seconds,
                attached=use.attached,
                extra=extra,
                scrub=self.scrubber.text,
            )
            report.sections.append((f"modal-sandbox: {instance.fixture} {sb.id}", text))

    def _should_keep(self, use: Use) -> bool:
        return (
            self.settings.keep_on_failure > 0
            and use.instance.share == "function"
            and not use.sandbox.terminated
            and use.sandbox.id not in self.kept
        )

    def _keep(self, use: Use) -> str:
        sb = use.sandbox
        seconds = keep_seconds(sb, self.settings.keep_on_failure)
        if seconds <= 1:
            return "not kept: its timeout is (almost) over"
        try:
            until = keep(sb, seconds)
        except Exception as exc:
            return f"could not keep it alive: {exc}"
        self.kept[sb.id] = until
        self.run.kept(sb, share=use.instance.share, test=use.instance.test)
        return reach(sb, until, self.run.run_id)

    def is_kept(self, sb: Sandbox) -> bool:
        return sb.id in self.kept

    def junit_properties(self, used: Iterable[Use]) -> list[tuple[str, str]]:
        """``modal_sandbox.<fixture>.id`` / ``.backend`` per sandbox; with a JUnit file
        (``--junitxml``) also ``.tunnel.<port>`` (on Modal the first lookup is a round trip)."""
        props: list[tuple[str, str]] = []
        junit = bool(getattr(self.config.option, "xmlpath", None))
        for use in used:
            sb, base = use.sandbox, f"{JUNIT_PREFIX}.{use.instance.fixture}"
            props += [(f"{base}.id", sb.id), (f"{base}.backend", sb.backend)]
            if not junit:
                continue
            try:
                endpoints = sb.tunnels
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
