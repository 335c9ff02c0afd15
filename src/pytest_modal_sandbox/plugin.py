"""The pytest plugin's entry point: options, hooks, configure, the header and collection.

Everything of a run lives in the :class:`~.session.Session` built here when sandboxes are
enabled.  Nothing heavy is imported until then, so an inactive plugin costs next to nothing at
start-up.
"""

from __future__ import annotations

import pytest

from . import hookspecs, settings
from .fixtures import PROVIDER_KEY, SKIP_REASON, sandbox, uses_a_sandbox

__all__ = ["sandbox"]

MARKER_HELP = (
    "sandbox(image=None, daemons=[], encrypted_ports=[], unencrypted_ports=[], h2_ports=[], "
    "env={}, secrets=[], workdir=None, timeout=600, idle_timeout=None, cpu=None, memory=None, "
    "gpu=None): the sandbox the `sandbox` fixture starts for this test (pytest-modal-sandbox)"
)


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


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    s = settings.read_settings(config)  # read even when off: a bad value is an error anyway
    if s.enabled:
        from .session import Session

        Session.configure(config, s)


def pytest_report_header(config: pytest.Config) -> str:
    session = config.stash.get(PROVIDER_KEY, None)
    if session is None:
        return "modal-sandbox: off (tests needing a sandbox are skipped; enable: --modal-sandbox)"
    from .session import session_of

    return session_of(config).header()


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Sandbox specs as parametrize values get readable ids that every worker agrees on."""
    if not isinstance(val, dict) and type(val).__name__ != "SandboxSpec":
        return None  # most parameters: decided without importing anything
    from .matrix import parametrize_id

    return parametrize_id(val)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--modal-sandbox``, tests that need a sandbox are skipped, saying why."""
    if config.stash.get(PROVIDER_KEY, None) is not None:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if uses_a_sandbox(item):
            item.add_marker(skip)
