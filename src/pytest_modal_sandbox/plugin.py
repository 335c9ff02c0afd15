"""The pytest layer: options, the marker, fixtures, reports and the end-of-run sweep.

Roles: the *only process* (no xdist) or the xdist *controller* owns the run (run id, run lock,
ledger, sweeps); *workers* start sandboxes and report what they did on their test reports.
Nothing heavy is imported until a sandbox is needed, so an inactive plugin costs next to
nothing at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from . import hookspecs, settings
from .fixtures import FIXTURE_ATTR, SKIP_REASON, sandbox

if TYPE_CHECKING:
    from .manager import SandboxManager
    from .settings import Settings
    from .spec import SandboxSpec

__all__ = ["sandbox"]

MARKER_HELP = (
    "sandbox(image=None, daemons=[], encrypted_ports=[], unencrypted_ports=[], h2_ports=[], "
    "env={}, secrets=[], workdir=None, timeout=600, idle_timeout=None, cpu=None, memory=None, "
    "gpu=None): the sandbox the `sandbox` fixture starts for this test (pytest-modal-sandbox)"
)
EVENTS_ATTR = "modal_sandbox_events"

SETTINGS_KEY = pytest.StashKey["Settings"]()
MANAGER_KEY = pytest.StashKey["SandboxManager"]()
CLEANUP_KEY = pytest.StashKey[list[Callable[[], object]]]()
CALL_REPORT_KEY = pytest.StashKey[pytest.TestReport]()


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--modal-sandbox-reap``: reap leftovers and exit before any run starts."""
    target = config.getoption("modal_sandbox_reap", None)
    if target is None:
        return None
    from .__main__ import reap_from_pytest

    return reap_from_pytest(config, str(target))


def role_of(config: pytest.Config) -> str:
    if hasattr(config, "workerinput"):
        return "worker"
    if getattr(config.option, "dist", "no") != "no" and not config.option.collectonly:
        return "controller"
    return "standalone"


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    s = settings.read_settings(config)
    config.stash[SETTINGS_KEY] = s
    config.stash[CLEANUP_KEY] = []
    if not s.enabled:
        return
    from .backends import resolve_backend_name
    from .lifecycle import install_sigint_handler, install_sigterm_handler, new_run_id

    role = role_of(config)
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    run_id = workerinput.get("modal_sandbox_run_id") or new_run_id()
    worker = workerinput.get("workerid", "main" if role == "standalone" else "controller")
    backend = workerinput.get("modal_sandbox_backend") or resolve_backend_name(s.backend)
    options = s.backend_options()
    if role == "worker":
        options.update(workerinput.get("modal_sandbox_backend_options", {}))
    elif backend == "emulator":
        from .errors import SandboxError

        try:
            options.update(_start_emulator(config))
        except SandboxError as exc:  # e.g. no bubblewrap: one clear line, not a traceback
            raise pytest.UsageError(f"--modal-sandbox=emulator: {exc}") from None
    from .manager import SandboxManager

    manager = SandboxManager(
        role=role,  # type: ignore[arg-type]
        run_id=run_id,
        worker=worker,
        backend_name=backend,
        backend_options=options,
        log_lines=s.log_lines,
    )
    config.stash[MANAGER_KEY] = manager
    from .reporting.hooks import install

    install(config, manager, s)  # progress, failure sections, secrets, summary, prestart
    config.stash[CLEANUP_KEY].append(install_sigint_handler())
    if s.sigterm:
        config.stash[CLEANUP_KEY].append(install_sigterm_handler())
    if manager.owns_run:
        manager.begin_run()
        manager.sweep_stale_runs()
    if role == "controller" and config.pluginmanager.hasplugin("xdist"):
        from .xdist import XdistController

        config.pluginmanager.register(XdistController(manager), "modal_sandbox_xdist")


def _start_emulator(config: pytest.Config) -> dict[str, Any]:
    """One emulator for the whole run (workers reach it through ``workerinput``); it stops
    after the end-of-run sweep, terminating anything still running in it."""
    import secrets

    from .emulator import EmulatorProcess
    from .lifecycle import kill_with_this_process

    token = (f"ak-{secrets.token_hex(8)}", f"as-{secrets.token_hex(8)}")
    s = settings_of(config)
    emulator = EmulatorProcess(
        token_id=token[0],
        token_secret=token[1],
        # images as on the local backend: pull (default), host, or auto
        images=s.local_images,
        host_images=s.host_images,
    ).start()
    config.stash[CLEANUP_KEY].append(emulator.stop)
    if emulator.pid is not None:  # it must die with us, even if we are SIGKILLed
        config.stash[CLEANUP_KEY].append(kill_with_this_process(emulator.pid))
    return {"server_url": emulator.url, "token_id": token[0], "token_secret": token[1]}


def settings_of(config: pytest.Config) -> Settings:
    return config.stash[SETTINGS_KEY]


def get_manager(config: pytest.Config) -> SandboxManager:
    return config.stash[MANAGER_KEY]


def image_override(config: pytest.Config, spec: SandboxSpec) -> SandboxSpec:
    """``--modal-sandbox-image`` / ``PYTEST_MODAL_SANDBOX_IMAGE`` applied to a test's spec."""
    return settings_of(config).images.apply(spec)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Sandbox specs as parametrize values get readable ids that every worker agrees on."""
    if not isinstance(val, dict) and type(val).__name__ != "SandboxSpec":
        return None  # most parameters: decided without importing anything
    from .matrix import parametrize_id

    return parametrize_id(val)


def call_report(item: pytest.Item) -> pytest.TestReport | None:
    return item.stash.get(CALL_REPORT_KEY, None)


def pytest_report_header(config: pytest.Config) -> str:
    s = settings_of(config)
    if not s.enabled:
        return "modal-sandbox: off (tests needing a sandbox are skipped; enable: --modal-sandbox)"
    manager = get_manager(config)
    try:
        detail = manager.backend.header()
    except Exception as exc:  # the header must not break the run; the fixtures will say why
        detail = f"{manager.backend_name} (unavailable: {exc})"
    return f"modal-sandbox: {detail}; run {manager.run_id}"


def _needs_sandbox(item: pytest.Item) -> bool:
    if item.get_closest_marker("sandbox") is not None:
        return True
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            if getattr(fixturedef.func, FIXTURE_ATTR, False):
                return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings_of(config).enabled:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if _needs_sandbox(item):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT_KEY] = report
    manager = item.config.stash.get(MANAGER_KEY, None)
    if manager is not None:
        events = manager.drain_events()
        if events:
            setattr(report, EVENTS_ATTR, [e.as_dict() for e in events])
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Controller: sandbox events from a worker's report go into the run's ledger."""
    events = getattr(report, EVENTS_ATTR, None)
    if not events or getattr(report, "node", None) is None:
        return  # no events, or our own process's report (already recorded)
    config = report.node.config
    manager = config.stash.get(MANAGER_KEY, None)
    if manager is not None and manager.owns_run:
        from .manager import Event

        manager.record_remote([Event.from_dict(e) for e in events])


@pytest.hookimpl(tryfirst=True)  # before the terminal's report, which can take seconds
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    from .lifecycle import interrupt_seen

    interrupt_seen()  # pytest has it: no need to deliver it again


def _finish_run(config: pytest.Config) -> None:
    if MANAGER_KEY in config.stash:
        from .lifecycle import interrupt_seen

        interrupt_seen()  # finishing anyway: a re-delivered interrupt would only cut cleanup
    manager = config.stash.get(MANAGER_KEY, None)
    if manager is None or not manager.owns_run:
        return
    try:
        manager.sweep_run()
    finally:
        say(config, manager.take_reports())


def say(config: pytest.Config, lines: list[str]) -> None:
    """Termination news for the terminal, one ``modal-sandbox:`` line each."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            with contextlib.suppress(Exception):
                reporter.write_line(f"modal-sandbox: {line}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        # after xdist has torn every worker down: end whatever is left of this run
        _finish_run(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    try:
        _finish_run(config)  # again: sessionfinish does not run if sessionstart failed
    finally:
        manager = config.stash.get(MANAGER_KEY, None)
        if manager is not None:
            manager.close()
            manager.end_run()
        for cleanup in config.stash.get(CLEANUP_KEY, []):
            with contextlib.suppress(Exception):
                cleanup()
