"""Create → launch daemons → wait until ready, as one step that never leaks on failure.

``start()`` is the script-facing entry point (``with start(spec) as sb: ...``); the pytest
layer calls :func:`launch` with its run's tags and terminates through its own layers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import daemons, entrypoints
from .backends import make_backend
from .backends.protocol import Backend, NativeReadiness
from .errors import SandboxError, SandboxStartError
from .sandbox import Sandbox
from .spec import SandboxSpec

__all__ = ["launch", "start"]


def launch(
    backend: Backend,
    spec: SandboxSpec,
    *,
    tags: Mapping[str, str] | None = None,
    name: str | None = None,
    shared: bool = False,
    log_lines: int = 20,
    on_created: Callable[[Sandbox], None] | None = None,
    quota_wait: float | None = None,
) -> Sandbox:
    """A ready sandbox for ``spec``; on any failure the sandbox is terminated before raising.

    ``on_created`` runs as soon as the sandbox exists (before readiness), so a caller can record
    the id even if what follows is interrupted.
    """
    requested = time.time()
    spec = spec.with_mounts_from(os.getcwd())  # the pytest layer resolved them from its rootdir
    spec = entrypoints.resolve(spec, backend)  # Daemon.from_image: the image's own command
    try:
        impl = backend.create(
            spec, tags=dict(tags or {}), name=name, shared=shared, quota_wait=quota_wait
        )
    except SandboxError:
        raise
    except Exception as exc:  # a backend's own error: keep it as the cause
        raise SandboxStartError(
            f"could not create a sandbox on {backend.name} for image {spec.image_label()}: {exc}"
        ) from exc
    native = impl if isinstance(impl, NativeReadiness) else None
    sandbox = Sandbox(impl, spec, backend.name)
    sandbox.timings.requested = requested
    sandbox.timings.created = time.time()
    try:
        if on_created is not None:
            on_created(sandbox)
        daemons.start_daemons(sandbox, mark=shared, log_lines=log_lines, native=native)
        sandbox.timings.ready = time.time()
    except BaseException:
        sandbox.terminate()
        raise
    return sandbox


@contextmanager
def start(
    spec: SandboxSpec | None = None,
    *,
    backend: str | Backend = "local",
    tags: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[Sandbox]:
    """A ready sandbox for the duration of the ``with`` block, terminated on the way out.

    ``spec`` may be omitted and its fields given as keywords instead; any remaining keywords
    are options for the backend (e.g. ``app=`` for Modal).
    """
    fields = {k: options.pop(k) for k in list(options) if k in SandboxSpec.__dataclass_fields__}
    if spec is None:
        spec = SandboxSpec(**fields)
    elif fields:
        spec = spec.replace(**fields)
    owned = isinstance(backend, str)
    be = make_backend(backend, **options) if isinstance(backend, str) else backend
    try:
        sandbox = launch(be, spec, tags=tags)
        try:
            yield sandbox
        finally:
            sandbox.terminate()
    finally:
        if owned:
            be.close()
