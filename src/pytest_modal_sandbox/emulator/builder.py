"""Building one ``modal.Image`` layer: its steps run on a copy of its parent's root.

A layer with ``RUN``/``COPY`` steps is built in a fresh copy of the parent root
(``cp -a --reflink=auto``), each ``RUN`` in a runtime sandbox in *build mode*: the copy is its
writable ``/`` (changes kept) and it shares the host's network (``pip``/``apt`` reach their
indexes; a build is not a sandbox).  Output is streamed to the build log as it comes.  The
result goes to the :class:`~.build_cache.BuildCache` under the chain's key, built under that
key's file lock, so concurrent builds of one chain (threads, emulators) build it once.

A layer with only ``ENV``/``WORKDIR``/``ARG``/``SHELL``/``CMD``... lines needs no copy: it is
its parent's root with new settings.  On the host root (``--images=host``, or a base that could
not be pulled under ``auto``) ``RUN``/``COPY`` cannot be applied: they are skipped, with a
warning in the build log, and the settings still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .. import errors
from ..runtime import DEFAULT_ENV, LocalRuntime, LocalSandbox, SandboxConfig
from ..runtime.mounts import resolve_in_root
from ..runtime.rootfs import copy_tree
from . import dockerfile as df
from .build_cache import BuildCache, ImageState
from .mounts import ContextFile
from .stdio import follow_file

__all__ = ["BuildFailed", "BuildLog", "LayerBuild", "layer_key"]

OUTPUT_TAIL = 20  # lines of a failed step's output in the error the client raises
# Mount points bubblewrap creates in a root that lacks them; not part of the image.
_PLACEHOLDERS = ("etc/hosts", "etc/resolv.conf", "proc", "dev", "etc")


class BuildFailed(Exception):
    """A layer could not be built; the message is what the client's ImageBuildError shows."""


class BuildLog:
    """Where a build writes: ``info`` lines, and a RUN step's ``stdout``/``stderr`` chunks."""

    def info(self, text: str) -> None:
        raise NotImplementedError

    def output(self, data: bytes, *, stderr: bool) -> None:
        raise NotImplementedError


@dataclass
class LayerBuild:
    """Everything one layer build needs besides its parent: its lines and what they use."""

    steps: Sequence[df.Step]
    context: Mapping[str, ContextFile] = field(default_factory=dict)  # path -> file, no "/"
    secret_env: Mapping[str, str] = field(default_factory=dict)
    force: bool = False
    timeout: float = 3600.0

    def has_filesystem_steps(self) -> bool:
        return any(isinstance(s, (df.Run, df.Copy)) for s in self.steps)


def layer_key(parent_key: str, build: LayerBuild) -> str:
    """The content key of a layer: its parent's key plus everything that shapes its content."""
    h = hashlib.sha256()
    h.update(json.dumps(["emulator-layer/1", parent_key]).encode())
    for step in build.steps:
        h.update(repr(step).encode())
    for name in sorted(build.context):
        item = build.context[name]
        h.update(f"{name}\0{item.mode:o}\0".encode() + hashlib.sha256(item.data).digest())
    for name in sorted(build.secret_env):  # values hashed, never stored
        h.update(name.encode() + b"\0" + build.secret_env[name].encode() + b"\0")
    return h.hexdigest()


@dataclass
class _Settings:
    env: dict[str, str]
    workdir: str | None
    shell: tuple[str, ...]
    args: dict[str, str] = field(default_factory=dict)

    def vars(self) -> dict[str, str]:
        return {**self.args, **self.env}


def _apply_setting(step: df.Step, s: _Settings) -> bool:
    """Apply an ENV/ARG/WORKDIR/SHELL step to ``s``; False for steps that are not settings."""
    if isinstance(step, df.Env):
        for key, value in step.pairs:
            s.env[key] = df.expand(value, s.vars())
    elif isinstance(step, df.Arg):
        if step.name not in s.args:
            s.args[step.name] = df.expand(step.default or "", s.vars())
    elif isinstance(step, df.Workdir):
        path = df.expand(step.path, s.vars())
        s.workdir = posixpath.normpath(posixpath.join(s.workdir or "/", path))
    elif isinstance(step, df.Shell):
        s.shell = step.argv
    else:
        return False
    return True


class Builder:
    """Runs layer builds for one emulator: build sandboxes live under ``runtime``."""

    def __init__(
        self,
        cache: BuildCache,
        runtime: LocalRuntime,
        *,
        blocking: Callable[..., Any],
    ) -> None:
        self.cache = cache
        self.runtime = runtime
        self._blocking = blocking  # runs a blocking call on the emulator's thread pool
        self.builds = 0  # layers whose steps actually ran
        self.cache_hits = 0  # layers served from the cache (this or an earlier emulator)

    async def build(self, parent: ImageState, build: LayerBuild, log: BuildLog) -> ImageState:
        """The layer's resulting state; raises :class:`BuildFailed`."""
        key = layer_key(parent.key, build)
        settings = _Settings(dict(parent.env), parent.workdir, parent.shell)
        if not build.has_filesystem_steps():
            for step in build.steps:
                _apply_setting(step, settings)
            return _state(key, parent, settings)
        if parent.rootfs is None:
            for step in build.steps:
                if not _apply_setting(step, settings) and isinstance(step, (df.Run, df.Copy)):
                    log.info(
                        f"WARNING: skipped on the host root ({parent.description or 'host'}): "
                        f"{_text(step)}\n"
                    )
            return _state(key, parent, settings)
        if not build.force:
            cached = self.cache.lookup(key)
            if cached is not None:
                self.cache_hits += 1
                log.info(f"using the cached build of this layer ({key[:12]})\n")
                return cached
        lock = FileLock(self.cache.lock_file(key), thread_local=False)  # released elsewhere
        await self._acquire(lock, log)
        try:
            cached = None if build.force else self.cache.lookup(key)
            if cached is not None:  # built meanwhile by someone else
                self.cache_hits += 1
                log.info(f"using the cached build of this layer ({key[:12]})\n")
                return cached
            return await self._build_locked(key, parent, build, settings, log)
        finally:
            lock.release()

    async def _acquire(self, lock: FileLock, log: BuildLog) -> None:
        """Take the layer's lock without blocking the event loop (and stay cancellable)."""
        said = False
        while True:
            try:
                await self._blocking(lock.acquire, timeout=0.2)
                return
            except Timeout:
                if not said:
                    log.info("waiting for another build of this layer to finish\n")
                    said = True

    async def _build_locked(
        self,
        key: str,
        parent: ImageState,
        build: LayerBuild,
        settings: _Settings,
        log: BuildLog,
    ) -> ImageState:
        assert parent.rootfs is not None
        staging = await self._blocking(self.cache.staging, key)
        root = staging / "rootfs"
        started = time.monotonic()
        try:
            with parent.use():
                root.mkdir()
                await self._blocking(copy_tree, str(parent.rootfs), root)
            for step in build.steps:
                if _apply_setting(step, settings):
                    if isinstance(step, df.Workdir) and settings.workdir:
                        _mkdir_in(root, settings.workdir)
                    continue
                if isinstance(step, df.Run):
                    await self._run(root, step, settings, build, log)
                elif isinstance(step, df.Copy):
                    log.info(f"=> {step.text}\n")
                    _copy_context(root, step, settings, build.context)
                elif isinstance(step, df.Ignored):
                    log.info(f"=> {step.text} (no effect on a sandbox)\n")
            state = _state(key, parent, settings)
            meta = {"parent": parent.key, "steps": [_text(s) for s in build.steps]}
            built: ImageState = await self._blocking(self.cache.commit, staging, state, meta)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._blocking(self.cache.discard, staging))
            raise
        self.builds += 1
        log.info(f"built in {time.monotonic() - started:.1f} s\n")
        return built

    async def _run(
        self,
        root: Path,
        step: df.Run,
        settings: _Settings,
        build: LayerBuild,
        log: BuildLog,
    ) -> None:
        log.info(f"=> {step.text}\n")
        argv = list(step.argv) if step.argv is not None else [*settings.shell, step.command]
        env = {**DEFAULT_ENV, **settings.args, **settings.env, **build.secret_env}
        before = {p: os.path.lexists(root / p) for p in _PLACEHOLDERS}
        config = SandboxConfig(
            command=argv,
            env=env,
            workdir=settings.workdir,
            rootfs=str(root),
            rootfs_writable=True,
            network=True,
            timeout=build.timeout,
            app="emulator-image-builds",
        )
        try:
            sb: LocalSandbox = await self._blocking(self.runtime.create, config)
        except errors.SandboxError as exc:
            raise BuildFailed(f"{step.text}: the build sandbox did not start: {exc}") from exc
        tail = _Tail()
        try:
            status = await self._follow(sb, log, tail)
        except BaseException:
            await asyncio.shield(self._blocking(sb.terminate, wait=True))
            raise
        finally:
            _remove_placeholders(root, before)
        if status.kind == "timeout":
            raise BuildFailed(f"{step.text}: timed out after {build.timeout:g} s{tail.text()}")
        if status.kind != "success":
            raise BuildFailed(f"{step.text}: {status.describe()}{tail.text()}")

    async def _follow(self, sb: LocalSandbox, log: BuildLog, tail: _Tail) -> Any:
        """Stream the step's stdout/stderr into the log until it ends; its exit status."""
        waiter = asyncio.ensure_future(self._blocking(sb.wait))

        async def pump(path: Path, stderr: bool) -> None:
            async for chunk in follow_file(path, 0, waiter.done):
                tail.add(chunk)
                log.output(chunk, stderr=stderr)

        pumps = [
            asyncio.ensure_future(pump(sb.stdout_path, False)),
            asyncio.ensure_future(pump(sb.stderr_path, True)),
        ]
        try:
            status = await waiter
            await asyncio.gather(*pumps)
        finally:
            for task in pumps:
                task.cancel()
        assert status is not None
        return status


class _Tail:
    """The last lines of a step's output, for the failure message."""

    def __init__(self) -> None:
        self._data = b""

    def add(self, chunk: bytes) -> None:
        self._data = (self._data + chunk)[-16384:]

    def text(self) -> str:
        lines = self._data.decode("utf-8", "replace").rstrip("\n").splitlines()[-OUTPUT_TAIL:]
        return "\n" + "\n".join(lines) if lines else ""


def _text(step: df.Step) -> str:
    if isinstance(step, (df.Run, df.Copy, df.Ignored)):
        return step.text
    return repr(step)


def _state(key: str, parent: ImageState, settings: _Settings) -> ImageState:
    return replace(
        parent, key=key, env=dict(settings.env), workdir=settings.workdir, shell=settings.shell
    )


def _mkdir_in(root: Path, path: str) -> None:
    """``mkdir -p`` of ``path`` as seen inside ``root`` (symlinks resolved inside it)."""
    os.makedirs(resolve_in_root(str(root), path), exist_ok=True)


def _copy_context(
    root: Path, step: df.Copy, settings: _Settings, context: Mapping[str, ContextFile]
) -> None:
    """``COPY``/``ADD`` from the build context, as Docker does: a directory source copies its
    contents, a file goes to ``dest`` (or into it when ``dest`` ends with ``/``, is a
    directory, or there are several sources), ``*?[`` patterns match files."""
    dest = df.expand(step.dest, settings.vars())
    if not dest.startswith("/"):
        dest = posixpath.join(settings.workdir or "/", dest)
    pairs: list[tuple[str, str | None]] = []  # (context path, path under dest or None)
    for source in step.sources:
        pairs += _select(step, df.expand(source, settings.vars()), context)
    into_dir = dest.endswith("/") or len(pairs) > 1 or len(step.sources) > 1
    for path, relative in pairs:
        if relative is None:  # a single file
            target = posixpath.join(dest, posixpath.basename(path)) if into_dir else dest
            host = resolve_in_root(str(root), target)
            if os.path.isdir(host):
                host = os.path.join(host, posixpath.basename(path))
        else:
            host = resolve_in_root(str(root), posixpath.join(dest, relative))
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if os.path.islink(host):
            os.unlink(host)
        item = context[path]
        with open(host, "wb") as f:
            f.write(item.data)
        os.chmod(host, item.mode & 0o7777)


def _select(
    step: df.Copy, source: str, context: Mapping[str, ContextFile]
) -> list[tuple[str, str | None]]:
    """The context files one COPY source names: ``(path, relative path | None for a file)``."""
    name = posixpath.normpath(source.lstrip("/") or ".")
    if name in context:
        return [(name, None)]
    if name == ".":
        return [(p, p) for p in sorted(context)]
    under = [p for p in sorted(context) if p.startswith(name + "/")]
    if under:
        return [(p, p[len(name) + 1 :]) for p in under]
    if any(c in name for c in "*?["):
        matched = [p for p in sorted(context) if fnmatch.fnmatchcase(p, name)]
        if matched:
            return [(p, None) for p in matched]
    known = ", ".join(sorted(context)[:10]) or "none"
    raise BuildFailed(
        f"{step.text}: {source!r} is not in the build context (files: {known}); the context "
        "is what the client uploaded for this layer (COPY sources, add_local_* with copy=True, "
        "context_files)"
    )


def _remove_placeholders(root: Path, before: Mapping[str, bool]) -> None:
    """Remove the empty mount points bubblewrap made in a root that had none there (their
    parents resolved inside the root: a step may have left symlinks to anywhere)."""
    for rel in _PLACEHOLDERS:
        if before.get(rel):
            continue
        parent, name = posixpath.split(rel)
        path = Path(resolve_in_root(str(root), parent)) / name
        with contextlib.suppress(OSError):
            if path.is_symlink():
                continue
            if path.is_dir():
                path.rmdir()  # only if empty
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
