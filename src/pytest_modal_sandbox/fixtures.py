"""The sandbox fixtures — ``sandbox`` and ``sandbox_fixture()`` — and one value for "a fixture
instance".

A :class:`FixtureInstance` is one sandbox a fixture gives: which fixture, the node its scope
belongs to, its share and its spec.  :func:`fixture_instance` is the one place it is computed:
from a fixture request at setup (:func:`instance_of_request`) and from a collected test by the
scheduler (:func:`instances_of_item`), so a sandbox started ahead goes to exactly the setup it
was made for.  The fixtures here only declare; what happens at setup and teardown is the
session's (``session.py``), reached through :data:`PROVIDER_KEY`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import pytest

from .errors import SpecError

if TYPE_CHECKING:
    from .run import Share
    from .sandbox import Sandbox
    from .spec import SandboxSpec

__all__ = [
    "PROVIDER_KEY",
    "SKIP_REASON",
    "Declaration",
    "FixtureInstance",
    "fixture_instance",
    "instance_of_request",
    "instances_of_item",
    "sandbox",
    "sandbox_fixture",
]

SKIP_REASON = (
    "needs a sandbox: run pytest with --modal-sandbox (or set modal_sandbox = true in the ini file)"
)
SCOPES = ("function", "class", "module", "package", "session")
SHARES = ("worker", "run")
NOT_GIVEN: Any = object()
"""No parameter (the fixture is not parametrized for this test)."""


@dataclass(frozen=True)
class Declaration:
    """What a sandbox fixture declares: its fields (``None``: the test's ``sandbox`` markers)
    and its share.  Set on the fixture function, where the scheduler finds it."""

    fields: Mapping[str, Any] | None
    share: Share = "function"
    prepare: Any = None  # a template's: a callable taking the sandbox, or shell commands
    snapshot_of: str | None = None  # a clone's template fixture (templates.py)


DECLARATION_ATTR = "_pytest_modal_sandbox_declaration"
MARKERS = Declaration(None)


@dataclass(frozen=True)
class FixtureInstance:
    """One sandbox a fixture gives: the fixture, its scope's node, share and spec."""

    fixture: str
    scope: str
    node: str  # the node id of its scope: the test's for function scope, "" for the session
    share: Share
    spec: SandboxSpec

    @property
    def ident(self) -> tuple[str, str, str]:
        """What a sandbox started ahead is matched by."""
        return (self.fixture, self.node, self.spec.spec_hash)

    @property
    def key(self) -> str:
        """The run's claim on a ``share="run"`` sandbox: one per fixture name and spec."""
        return f"{self.fixture}|{self.spec.spec_hash}"

    @property
    def test(self) -> str:
        """The label its sandbox is tagged with (and the ledger keeps)."""
        return self.node if self.scope == "function" else f"{self.fixture}@{self.node or 'session'}"

    @property
    def label(self) -> str:
        """How progress lines and the summary name it: ``db (module test_a.py)``."""
        if self.scope == "function":
            return f"{self.fixture} ({self.node})"
        where = f" {self.node}" if self.node and self.scope != "session" else ""
        return f"{self.fixture} ({self.scope}{where})"

    def with_spec(self, spec: SandboxSpec) -> FixtureInstance:
        return replace(self, spec=spec)


class ImageOverride(Protocol):
    def apply(self, spec: SandboxSpec) -> SandboxSpec: ...


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


def _param_fields(fixture: str, param: Any) -> dict[str, Any]:
    """Fields from indirect parametrization (``parametrize("sandbox", [{...}], indirect=True)``)."""
    from .spec import SandboxSpec

    if param is NOT_GIVEN or param is None:
        return {}
    if isinstance(param, SandboxSpec):
        return param.as_fields()
    if not isinstance(param, Mapping):
        raise SpecError(
            f"parametrize value for {fixture!r} must be a dict of sandbox fields "
            f"or a SandboxSpec, got {param!r}"
        )
    return dict(param)


def fixture_instance(
    declaration: Declaration,
    *,
    fixture: str,
    scope: str,
    node: pytest.Item | pytest.Collector,
    param: Any,
    images: ImageOverride,
) -> FixtureInstance:
    """The instance: base fields (the markers, or the factory's) < parametrization < the image
    override.  (A ``pytest_modal_sandbox_spec`` hook sees it at setup, last of all.)"""
    from .spec import spec_from_fields

    base = marker_fields(node) if declaration.fields is None else declaration.fields
    spec = images.apply(spec_from_fields({**base, **_param_fields(fixture, param)}))
    spec = spec.with_mounts_from(node.config.rootpath)  # relative mounts: from the rootdir
    share = "function" if scope == "function" else declaration.share
    return FixtureInstance(fixture, scope, node.nodeid, share, spec)


def instance_of_request(
    request: pytest.FixtureRequest, declaration: Declaration, images: ImageOverride
) -> FixtureInstance:
    """At setup: the instance this request asks for."""
    return fixture_instance(
        declaration,
        fixture=request.fixturename or "sandbox",
        scope=request.scope,
        node=request.node,
        param=getattr(request, "param", NOT_GIVEN),
        images=images,
    )


def scope_node(item: pytest.Item, scope: str, baseid: str) -> pytest.Item | pytest.Collector:
    """The node a fixture of ``scope`` belongs to for ``item`` (what ``request.node`` is)."""
    if scope == "function":
        return item
    if scope == "session":
        return item.session
    if scope == "package":  # the package that defines the fixture
        found = [p for p in item.listchain() if isinstance(p, pytest.Package)]
        return next((p for p in reversed(found) if p.nodeid == baseid), item.session)
    kind = pytest.Class if scope == "class" else pytest.Module
    return item.getparent(kind) or item


def instances_of_item(item: pytest.Item, images: ImageOverride) -> Iterator[FixtureInstance]:
    """For the scheduler: every sandbox fixture instance ``item`` will ask for (those whose
    spec is invalid are left to their setup, which reports them)."""
    callspec = getattr(item, "callspec", None)
    params: Mapping[str, Any] = callspec.params if callspec is not None else {}
    for name, fixturedef in _fixture_defs(item):
        declaration = getattr(fixturedef.func, DECLARATION_ATTR, None)
        if not isinstance(declaration, Declaration) or declaration.snapshot_of is not None:
            continue  # a clone's spec is known once its template's snapshot is (templates.py)
        node = scope_node(item, fixturedef.scope, fixturedef.baseid)
        try:
            yield fixture_instance(
                declaration,
                fixture=name,
                scope=fixturedef.scope,
                node=node,
                param=params.get(name, NOT_GIVEN),
                images=images,
            )
        except SpecError:
            continue


def clone_declarations(item: pytest.Item) -> Iterator[tuple[str, Declaration]]:
    """(name, declaration) of each clone fixture (``snapshot_of=``) ``item`` uses."""
    for name, fixturedef in _fixture_defs(item):
        declaration = getattr(fixturedef.func, DECLARATION_ATTR, None)
        if isinstance(declaration, Declaration) and declaration.snapshot_of is not None:
            yield name, declaration


def _fixture_defs(item: pytest.Item) -> Iterator[tuple[str, Any]]:
    """(name, definition) of each fixture the item uses: the closest definition of each name.
    pytest keeps this on the item's fixture info; it has no public accessor."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name)
        if defs:
            yield name, defs[-1]


def uses_a_sandbox(item: pytest.Item) -> bool:
    """Whether ``item`` carries a ``sandbox`` marker or uses a sandbox fixture."""
    if item.get_closest_marker("sandbox") is not None:
        return True
    return any(hasattr(d.func, DECLARATION_ATTR) for _, d in _fixture_defs(item))


def error_origin(request: pytest.FixtureRequest, declaration: Declaration, what: str) -> str:
    """Who reports a problem: ``sandbox spec of <test>`` (``sandbox of`` once the spec was
    fine) for the ``sandbox`` fixture, ``sandbox fixture 'db'`` for a named one."""
    if request.fixturename == "sandbox" and declaration.fields is None:
        noun = "sandbox spec" if what == "spec" else "sandbox"
        return f"{noun} of {request.node.nodeid}"
    return f"sandbox fixture {request.fixturename!r}"


# -- the fixtures ---------------------------------------------------------------------------


class Provider(Protocol):
    """What the fixtures need of the session: a sandbox for a request, torn down after."""

    def provide(
        self, request: pytest.FixtureRequest, declaration: Declaration
    ) -> Generator[Sandbox, None, None]: ...


PROVIDER_KEY = pytest.StashKey[Provider]()
"""Where the session (``session.py``) is, when sandboxes are enabled."""


def _provide(
    request: pytest.FixtureRequest, declaration: Declaration
) -> Generator[Sandbox, None, None]:
    provider = request.config.stash.get(PROVIDER_KEY, None)
    if provider is None:
        pytest.skip(SKIP_REASON)
    yield from provider.provide(request, declaration)


def _sandbox(request: pytest.FixtureRequest) -> Generator[Sandbox, None, None]:
    """A ready sandbox for this test, from its closest ``@pytest.mark.sandbox`` fields
    (module and class markers merge; indirect parametrization overrides fields)."""
    yield from _provide(request, MARKERS)


setattr(_sandbox, DECLARATION_ATTR, MARKERS)  # on the function pytest keeps as the fixture's
sandbox = pytest.fixture(name="sandbox")(_sandbox)


def sandbox_fixture(
    *,
    scope: Literal["function", "class", "module", "package", "session"] = "function",
    share: Literal["worker", "run"] = "worker",
    name: str | None = None,
    prepare: Callable[[Sandbox], object] | str | Sequence[str] | None = None,
    snapshot_of: str | None = None,
    **fields: Any,
) -> Any:
    """A named sandbox fixture: ``redis = sandbox_fixture(image="redis:7", scope="session", ...)``.

    ``share="run"`` (with a wider scope than function) gives one sandbox for the whole run,
    shared by every xdist worker and terminated only at the end of the run;
    ``share="worker"`` gives each process its own.  Spec fields are validated at setup, so a
    mistake is reported on the tests that use the fixture.

    ``snapshot_of="db_template"`` makes a function-scoped fixture of fresh clones of the
    template fixture ``db_template`` (a wider-scoped sandbox fixture): its ``prepare`` step (a
    callable taking the template sandbox, or shell commands) runs once, then a snapshot is
    taken (once per run for a ``share="run"`` template) and every test gets a new sandbox
    started from it, its daemons started again with their probes (docs/how-to/snapshots.md).
    """
    if scope not in SCOPES:
        raise SpecError(f"sandbox_fixture: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if share not in SHARES:
        raise SpecError(f"sandbox_fixture: share must be 'worker' or 'run', got {share!r}")
    if share == "run" and scope == "function":
        raise SpecError("sandbox_fixture: share='run' needs a wider scope than 'function'")
    if snapshot_of is not None and (not isinstance(snapshot_of, str) or not snapshot_of):
        raise SpecError(f"sandbox_fixture: snapshot_of must be a fixture name, got {snapshot_of!r}")
    if snapshot_of is not None and scope != "function":
        raise SpecError(
            f"sandbox_fixture: snapshot_of={snapshot_of!r} gives a fresh clone per test, so its "
            f"scope is 'function' (got {scope!r}); share the template instead"
        )
    if snapshot_of is not None and prepare is not None:
        raise SpecError(
            "sandbox_fixture: prepare belongs to the template (the fixture snapshot_of names), "
            "not to its clones"
        )
    declaration = Declaration(
        dict(fields),
        "function" if scope == "function" else share,
        prepare=prepare,
        snapshot_of=snapshot_of,
    )

    def fixture(request: pytest.FixtureRequest) -> Generator[Sandbox, None, None]:
        yield from _provide(request, declaration)

    setattr(fixture, DECLARATION_ATTR, declaration)
    if name is not None:
        fixture.__name__ = name
    fixture_function: Callable[..., Any] = pytest.fixture(scope=scope, name=name)(fixture)
    return cast(Any, fixture_function)
