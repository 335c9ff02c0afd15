"""The live suite: the plugin against a real Modal workspace (marker ``live``).

Run it with ``pytest tests/live -m live`` (or ``tox -e live``); docs/how-to/verify-against-modal.md
says what it checks and costs.  Every test here is skipped, with a reason that says how to run
it, unless both hold:

* the run asks for it: the ``-m`` expression names ``live`` (a plain ``pytest`` collects
  ``tests/live`` too, but never spends a workspace's money);
* Modal credentials are configured — ``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``, or a token in
  ``~/.modal.toml`` (``MODAL_CONFIG_PATH``), as ``modal token new`` writes it.

Each test runs inner pytest runs with ``--modal-sandbox=modal`` in the app
``pytest-modal-sandbox-live`` (``--modal-sandbox-app`` on this run's command line picks another;
the workspace's other apps are never touched), each test in a state directory of its own, and
afterwards asks Modal that none of their sandboxes still runs — ending any that does, and
failing.  ``--modal-sandbox-lease``/``--modal-sandbox-idle-timeout`` given to this run are
the dead-man switch check's (default 10 s and 20 s).

Nothing here knows of the emulator: ``tests/test_live_suite.py`` runs this directory against
one by setting the same ``MODAL_*`` variables a workspace's token does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import faultlib
from pytest_modal_sandbox.backends import modal_credentials_configured

LIVE_APP = "pytest-modal-sandbox-live"
COMMAND = "pytest tests/live -m live"
DEADMAN_LEASE = 10  # seconds: the dead-man check's defaults (the plugin's are 60 and 60)
DEADMAN_IDLE = 20

NOT_SELECTED = (
    f"live: runs against your Modal workspace (sandboxes cost money) only when selected: "
    f"`{COMMAND}` (or `tox -e live`)"
)
NO_CREDENTIALS = (
    "live: no Modal credentials configured; run `modal token new` (or set MODAL_TOKEN_ID and "
    f"MODAL_TOKEN_SECRET), then `{COMMAND}` (or `tox -e live`)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    live = [item for item in items if item.get_closest_marker("live")]
    if not live:
        return
    if not re.search(r"\blive\b", config.getoption("markexpr") or ""):
        reason = NOT_SELECTED
    elif not modal_credentials_configured():
        reason = NO_CREDENTIALS
    else:
        return
    for item in live:
        item.add_marker(pytest.mark.skip(reason=reason))


@dataclass(frozen=True)
class LiveSettings:
    """Where the live runs go, from this run's own ``--modal-sandbox-*`` options."""

    app: str
    environment: str | None
    lease: int
    idle_timeout: int
    gone_slack: float = 60.0  # seconds Modal may take past its deadlines to stop listing one

    @classmethod
    def from_config(cls, config: pytest.Config) -> LiveSettings:
        def option(name: str) -> str | None:
            value = config.getoption(name, None)
            return None if value in (None, "") else str(value)

        return cls(
            app=option("modal_sandbox_app") or LIVE_APP,
            environment=option("modal_sandbox_environment"),
            # the plugin has checked both (a whole number of seconds), enabled or not
            lease=int(option("modal_sandbox_lease") or DEADMAN_LEASE),
            idle_timeout=int(option("modal_sandbox_idle_timeout") or DEADMAN_IDLE),
        )

    @property
    def ini(self) -> dict[str, str]:
        """What every inner run's ``pytest.ini`` says: this app (and environment)."""
        ini = {"modal_sandbox_app": self.app}
        if self.environment:
            ini["modal_sandbox_environment"] = self.environment
        return ini

    @property
    def cli_args(self) -> list[str]:
        """The same for ``python -m pytest_modal_sandbox list|reap``."""
        args = ["--backend", "modal", "--app", self.app]
        return [*args, "--environment", self.environment] if self.environment else args


@pytest.fixture(scope="session")
def live_settings(pytestconfig: pytest.Config) -> LiveSettings:
    return LiveSettings.from_config(pytestconfig)


@pytest.fixture
def live(
    live_settings: LiveSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[faultlib.World]:
    """Inner runs of this test (``faultlib.InnerRun(live, ...)``) on Modal, in the live app, with a
    state directory of their own; afterwards none of their sandboxes may still run."""
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(tmp_path / "state"))
    lister = faultlib.ModalLister(
        app=live_settings.app, environment=live_settings.environment, interval=0.5
    )
    world = faultlib.World("modal", tmp_path, lister, ini=live_settings.ini)
    try:
        yield world
        leaked = faultlib.clean_up(world, timeout=live_settings.gone_slack)
        assert not leaked, f"sandboxes left running after the test (now terminated): {leaked}"
    finally:
        lister.close()
