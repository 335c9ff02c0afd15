"""Hooks users can implement in ``conftest.py`` to adjust and observe sandboxes.

Registered with ``pytest_addhooks``; see docs/reference/hooks.md for runnable examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .sandbox import Sandbox
    from .spec import SandboxSpec


@pytest.hookspec(firstresult=True)
def pytest_modal_sandbox_spec(
    spec: SandboxSpec, request: pytest.FixtureRequest
) -> SandboxSpec | None:
    """Return a changed spec for this request (e.g. ``spec.replace(image=...)``), or None.

    Called once per sandbox fixture setup, after markers, parametrization and
    ``--modal-sandbox-image`` are applied; the first non-None result wins.
    """


def pytest_modal_sandbox_created(sandbox: Sandbox) -> None:
    """A sandbox exists (its daemons are not launched yet)."""


def pytest_modal_sandbox_ready(sandbox: Sandbox) -> None:
    """Every daemon of the sandbox passed its readiness probe."""


def pytest_modal_sandbox_before_terminate(sandbox: Sandbox, report: Any) -> None:
    """The sandbox is about to be terminated by its fixture.

    ``report`` is the call-phase ``TestReport`` of the test that used it (function scope), or
    None (other scopes, or the test did not reach its call phase).
    """
