"""The ``sandbox`` fixture and ``sandbox_fixture()``, the factory for named ones.

Spec problems and start failures become one clean per-test error (``pytest.fail(...,
pytrace=False)`` from setup), the same with and without xdist.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

from .errors import SandboxError, SpecError

if TYPE_CHECKING:
    from .sandbox import Sandbox
    from .spec import SandboxSpec

__all__ = ["SKIP_REASON", "sandbox", "sandbox_fixture"]

SKIP_REASON = (
    "needs a sandbox: run pytest with --modal-sandbox (or set modal_sandbox = true in the ini file)"
)
FIXTURE_ATTR = "_pytest_modal_sandbox_fixture"
SPEC_ATTR = "_pytest_modal_sandbox_spec"
"""Set by ``sandbox_fixture`` on its fixture function for prestart: (fields, share, module)."""
SCOPES = ("function", "class", "module", "package", "session")
SHARES = ("worker", "run")


def marker_fields(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    """``sandbox`` markers merged: the closest marker wins per field."""
    fields: dict[str, Any] = {}
    for mark in node.iter_markers("sandbox"):  # closest first
        if mark.args:
            raise SpecError(
                f"@pytest.mark.sandbox takes keyword fields only, got positional {mark.args!r}"
            )
        for key, value in mark.kwargs.items():
            fields.setdefault(key, value)
    return fields


def param_fields(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Fields from indirect parametrization (``parametrize("sandbox", [{...}], indirect=True)``)."""
    from .spec import SandboxSpec

    param = getattr(request, "param", None)
    if param is None:
        return {}
    if isinstance(param, SandboxSpec):
        return param.as_fields()
    if not isinstance(param, Mapping):
        raise SpecError(
            f"parametrize value for {request.fixturename!r} must be a dict of sandbox fields "
            f"or a SandboxSpec, got {param!r}"
        )
    return dict(param)


def _where(request: pytest.FixtureRequest, from_marker: bool, what: str = "spec") -> str:
    """Who reports: ``sandbox spec of <test>`` (``sandbox of`` once the spec was fine)."""
    if request.fixturename == "sandbox" and from_marker:
        noun = "sandbox spec" if what == "spec" else "sandbox"
        return f"{noun} of {request.node.nodeid}"
    return f"sandbox fixture {request.fixturename!r}"


def resolve_spec(request: pytest.FixtureRequest, base: Mapping[str, Any]) -> SandboxSpec:
    """Base fields (markers or the factory's) < parametrization < image override < hook."""
    from .plugin import image_override
    from .spec import SandboxSpec, spec_from_fields

    fields = {**base, **param_fields(request)}
    spec = spec_from_fields(fields)
    spec = image_override(request.config, spec)
    changed = request.config.hook.pytest_modal_sandbox_spec(spec=spec, request=request)
    if changed is not None:
        if not isinstance(changed, SandboxSpec):
            raise SpecError(
                f"pytest_modal_sandbox_spec hook returned {changed!r}, not a SandboxSpec or None"
            )
        spec = changed
    return spec


def provide(
    request: pytest.FixtureRequest,
    base: Mapping[str, Any] | None,
    *,
    share: Literal["function", "worker", "run"],
    key: str,
) -> Generator[Sandbox, None, None]:
    """Setup and teardown shared by every sandbox fixture."""
    from .plugin import get_manager, settings_of

    config = request.config
    if not settings_of(config).enabled:
        pytest.skip(SKIP_REASON)
    where = _where(request, from_marker=base is None)
    try:
        spec = resolve_spec(request, marker_fields(request.node) if base is None else base)
    except SpecError as exc:
        error: str | None = f"{where}: {exc}"
    else:
        error = None
    if error:  # failed outside the except block: no "during handling" chain in the report
        pytest.fail(error, pytrace=False)
    manager = get_manager(config)
    test = (
        request.node.nodeid
        if request.scope == "function"
        else (f"{request.fixturename}@{request.node.nodeid or 'session'}")
    )
    from .prestart import obtain
    from .reporting.hooks import reporting_of

    reporting = reporting_of(config)
    try:  # a prestarted sandbox if there is one (see prestart.py), else a new start
        sb = obtain(
            request,
            manager,
            spec,
            test=test,
            share=share,
            key=key,
            on_created=lambda s: config.hook.pytest_modal_sandbox_created(sandbox=s),
        )
    except SandboxError as exc:
        where = _where(request, from_marker=base is None, what="start")
        error = reporting.scrubber.text(f"{where}: {exc}")  # a daemon's log tail may hold one
    if error:
        pytest.fail(error, pytrace=False)
    try:
        config.hook.pytest_modal_sandbox_ready(sandbox=sb)
        yield sb
    finally:
        if not reporting.is_kept(sb):  # kept on failure: the sweeps end it after its deadline
            report = None
            if request.scope == "function":
                from .plugin import call_report

                report = call_report(request.node)
            try:
                if manager.terminates(share):  # not a worker letting go of the run's sandbox
                    config.hook.pytest_modal_sandbox_before_terminate(sandbox=sb, report=report)
            finally:
                manager.finish(sb, share=share, test=test, report=report)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Generator[Sandbox, None, None]:
    """A ready sandbox for this test, from its closest ``@pytest.mark.sandbox`` fields
    (module and class markers merge; indirect parametrization overrides fields)."""
    yield from provide(request, None, share="function", key="sandbox")


setattr(sandbox, FIXTURE_ATTR, True)


def sandbox_fixture(
    *,
    scope: Literal["function", "class", "module", "package", "session"] = "function",
    share: Literal["worker", "run"] = "worker",
    name: str | None = None,
    **fields: Any,
) -> Any:
    """A named sandbox fixture: ``redis = sandbox_fixture(image="redis:7", scope="session", ...)``.

    ``share="run"`` (with a wider scope than function) gives one sandbox for the whole run,
    shared by every xdist worker and terminated only at the end of the run;
    ``share="worker"`` gives each process its own.  Spec fields are validated at setup, so a
    mistake is reported on the tests that use the fixture.
    """
    if scope not in SCOPES:
        raise SpecError(f"sandbox_fixture: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if share not in SHARES:
        raise SpecError(f"sandbox_fixture: share must be 'worker' or 'run', got {share!r}")
    if share == "run" and scope == "function":
        raise SpecError("sandbox_fixture: share='run' needs a wider scope than 'function'")
    from .spec import FIELDS, spec_from_fields

    spec_fields = {k: v for k, v in fields.items() if k in FIELDS}
    defined_in = sys._getframe(1).f_globals.get("__name__", "?")  # same in every xdist worker
    effective_share: Literal["function", "worker", "run"] = share
    if scope == "function":
        effective_share = "function"
    unknown = [k for k in fields if k not in FIELDS]

    def fixture(request: pytest.FixtureRequest) -> Generator[Sandbox, None, None]:
        if unknown:  # reported per test like any spec error, with spec_from_fields' hint
            try:
                spec_from_fields(fields)
            except SpecError as exc:
                error = f"sandbox fixture {request.fixturename!r}: {exc}"
            pytest.fail(error, pytrace=False)
        key = f"{defined_in}:{request.fixturename}"
        yield from provide(request, spec_fields, share=effective_share, key=key)

    setattr(fixture, FIXTURE_ATTR, True)
    if not unknown:  # what prestart.py needs to start it before the first test asks
        setattr(fixture, SPEC_ATTR, (spec_fields, effective_share, defined_in))
    if name is not None:
        fixture.__name__ = name
    return cast(Any, pytest.fixture(scope=scope, name=name)(fixture))
