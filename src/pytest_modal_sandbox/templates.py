"""Templates and their clones: ``sandbox_fixture(snapshot_of="db_template")``.

A template is a wider-scoped sandbox fixture with a ``prepare`` step, run when the template is
set up (:meth:`Templates.prepare`).  The first clone that needs it sets the template up
(``request.getfixturevalue``) and takes a snapshot of it (:meth:`Sandbox.snapshot`); every clone
is then a new sandbox started from that snapshot with the template's spec, so its daemons start
again with their probes.  For a ``share="run"`` template, preparing and snapshotting happen once
per run, under the same file lock as the claim on the shared sandbox: a marker file says it was
prepared, and the snapshot is handed to the other xdist workers as a JSON record beside the
claim.  Once this process knows a template's snapshot, the scheduler
starts the coming tests' clones ahead (:meth:`Templates.clones_of`).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from filelock import FileLock

from .errors import SandboxError, SpecError
from .fixtures import (
    DECLARATION_ATTR,
    NOT_GIVEN,
    Declaration,
    FixtureInstance,
    ImageOverride,
    clone_declarations,
    fixture_instance,
    scope_node,
)
from .snapshot import Snapshot

if TYPE_CHECKING:
    from .run import Run
    from .sandbox import Sandbox

__all__ = ["Templates"]


@dataclass(frozen=True)
class _Template:
    name: str
    declaration: Declaration
    scope: str
    baseid: str


def _template(node: pytest.Item, clone: str, declaration: Declaration) -> _Template:
    """The template ``snapshot_of`` names, checked: a sandbox fixture with a wider scope.  A
    clone fixture named there stands for its own template (a clone of a clone is a fresh clone
    of the same template); a chain that comes back to where it started is a cycle."""
    name = declaration.snapshot_of or ""
    chain = [clone]
    current = declaration
    while current.snapshot_of is not None:
        name = current.snapshot_of
        if name in chain:
            cycle = " -> ".join([*chain, name])
            raise SpecError(f"snapshot_of={declaration.snapshot_of!r}: a cycle ({cycle})")
        chain.append(name)
        defs = node.session._fixturemanager.getfixturedefs(name, node)
        if not defs:
            manager = node.session._fixturemanager
            known = sorted(
                n
                for n in getattr(manager, "_arg2fixturedefs", {})
                if any(
                    hasattr(d.func, DECLARATION_ATTR) for d in manager.getfixturedefs(n, node) or ()
                )
            )
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(
                f"snapshot_of={name!r} names no fixture visible here{hint}; sandbox fixtures: "
                f"{', '.join(known) or 'none'}"
            )
        found = getattr(defs[-1].func, DECLARATION_ATTR, None)
        if not isinstance(found, Declaration):
            raise SpecError(
                f"snapshot_of={name!r} is not a sandbox fixture; a template is made with "
                "sandbox_fixture(scope='session', prepare=...)"
            )
        if found.snapshot_of is None:
            if defs[-1].scope == "function":
                raise SpecError(
                    f"snapshot_of={name!r}: the template has function scope, so it would be "
                    "prepared and snapshotted for every test; give it a wider scope "
                    "(scope='session', share='run')"
                )
            return _Template(name, found, defs[-1].scope, defs[-1].baseid)
        current = found
    raise SpecError(f"snapshot_of={name!r}: not a template")  # pragma: no cover


def _template_instance(
    item: pytest.Item, template: _Template, images: ImageOverride
) -> FixtureInstance:
    return fixture_instance(
        template.declaration,
        fixture=template.name,
        scope=template.scope,
        node=scope_node(item, template.scope, template.baseid),
        param=NOT_GIVEN,
        images=images,
    )


def _clone(
    item: pytest.Item,
    clone: str,
    declaration: Declaration,
    template_instance: FixtureInstance,
    snapshot: Snapshot,
) -> FixtureInstance:
    fields = {**template_instance.spec.as_fields(), **(declaration.fields or {})}
    spec = template_instance.spec.replace(**{**fields, "image": snapshot})
    return FixtureInstance(clone, "function", item.nodeid, "function", spec)


class Templates:
    """This process's templates' snapshots, by the template instance's key."""

    def __init__(self, run: Run, images: ImageOverride) -> None:
        self.run = run
        self.images = images
        self._snapshots: dict[str, Snapshot] = {}
        self._prepared: set[str] = set()

    def clone_instance(
        self, request: pytest.FixtureRequest, declaration: Declaration
    ) -> FixtureInstance:
        """The clone this request asks for: the template set up, prepared and snapshotted
        first if need be.  Mistakes are :class:`SpecError` naming the fixture."""
        item = request.node
        assert isinstance(item, pytest.Item)
        clone = request.fixturename or "sandbox"
        template = _template(item, clone, declaration)
        sandbox: Sandbox = request.getfixturevalue(template.name)
        instance = _template_instance(item, template, self.images)
        snapshot = self._snapshot(sandbox, instance, template.declaration.prepare)
        return _clone(item, clone, declaration, instance, snapshot)

    def clones_of(self, item: pytest.Item) -> list[FixtureInstance]:
        """For the scheduler: the clones ``item`` will ask for whose template's snapshot this
        process knows already (so they are started ahead, like any function-scoped sandbox);
        the first clone of a template starts at its setup."""
        found: list[FixtureInstance] = []
        for clone, declaration in clone_declarations(item):
            try:
                template = _template(item, clone, declaration)
                instance = _template_instance(item, template, self.images)
            except SpecError:
                continue  # reported at its setup
            snapshot = self._snapshots.get(self._key(instance))
            if snapshot is not None:
                found.append(_clone(item, clone, declaration, instance, snapshot))
        return found

    def _key(self, instance: FixtureInstance) -> str:
        return instance.key if instance.share == "run" else "|".join(instance.ident)

    def prepare(self, sandbox: Sandbox, instance: FixtureInstance, prepare: Any) -> None:
        """A template's setup: run its ``prepare`` step on it, once per template sandbox (once
        per run for ``share="run"``: the first worker to get there runs it, under the claim's
        lock, and the others wait for it)."""
        key = self._key(instance)
        if key in self._prepared:
            return
        with self._claim(instance) as (claims, name):
            marker = claims / f"{name}.prepared" if claims is not None else None
            if marker is None or not marker.exists():
                _run_prepare(sandbox, instance.fixture, prepare)
                if marker is not None:
                    marker.touch()
        self._prepared.add(key)

    def _snapshot(self, sandbox: Sandbox, instance: FixtureInstance, prepare: Any) -> Snapshot:
        key = self._key(instance)
        if key in self._snapshots:
            return self._snapshots[key]
        self.prepare(sandbox, instance, prepare)
        with self._claim(instance) as (claims, name):
            record = claims / f"{name}.snapshot.json" if claims is not None else None
            if record is not None and record.exists():
                snapshot = Snapshot.from_json(record.read_text())
            else:
                snapshot = sandbox.snapshot()
                if record is not None:
                    record.write_text(snapshot.to_json())
        self._snapshots[key] = snapshot
        return snapshot

    @contextlib.contextmanager
    def _claim(self, instance: FixtureInstance) -> Iterator[tuple[Path | None, str]]:
        """For a ``share="run"`` template: its claim's directory and name, locked (the lock
        of the claim on the shared sandbox); else nothing to share."""
        if instance.share != "run":
            yield None, ""
            return
        claims = self.run.runs / f"{self.run.run_id}.d"
        claims.mkdir(exist_ok=True)
        name = self.run.shared_name(instance.key, instance.spec)
        with FileLock(str(claims / f"{name}.lock")):
            yield claims, name


def _run_prepare(sandbox: Sandbox, template: str, prepare: Any) -> None:
    if prepare is None:
        return
    try:
        if callable(prepare):
            prepare(sandbox)
        else:
            for command in [prepare] if isinstance(prepare, str) else list(prepare):
                sandbox.sh(command).check()
    except SandboxError as exc:
        raise SandboxError(f"template {template!r}: its prepare step failed: {exc}") from exc
