"""Built image layers on disk, keyed by their layer chain, shared by every emulator process.

Layout under ``<cache_root()>/emulator-builds`` (``$PYTEST_MODAL_SANDBOX_CACHE_DIR``...)::

    roots/<key>/rootfs/      the layer's complete root filesystem (never modified once here)
    roots/<key>/image.json   env, workdir, shell, the parent's key, the steps (for humans)
    roots/<key>/use.lock     a shared flock while a sandbox or a build uses it (prune skips it)
    locks/<key>.lock         held while the layer is built: concurrent builds build it once
    tmp/                     builds in progress (renamed into roots/ when they succeed);
                             an emulator's start sweeps away what interrupted builds left

``<key>`` is a SHA-256 over the parent's key and everything that decides the layer's content
(its lines, context files, build secrets), so an identical chain is a cache hit in any later
emulator, and changing any step rebuilds from there on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .._paths import cache_root
from ..runtime.store import remove_tree

__all__ = ["BuildCache", "ImageState"]

DEFAULT_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True)
class ImageState:
    """What a (built) layer gives the next layer and the sandboxes that run it."""

    key: str  # content key of the chain up to here ("host" for the host root)
    rootfs: Path | None  # None: the host root (a private view of it)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    shell: tuple[str, ...] = DEFAULT_SHELL
    lock_path: Path | None = None  # hold a shared flock on it while the root is in use
    description: str = ""  # the base it came from, for log lines
    layers: tuple[tuple[str, str], ...] = ()  # a filesystem snapshot's (``snapshots.py``)

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Mark the root in use (a shared flock), so pruning leaves it alone."""
        if self.lock_path is None:
            yield
            return
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # pruned meanwhile: nothing to protect any more
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)


class BuildCache:
    """Built layer roots under ``directory`` (default ``cache_root() / "emulator-builds"``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(directory) if directory is not None else cache_root() / "emulator-builds"
        self._roots = self.root / "roots"
        self._locks = self.root / "locks"
        self._tmp = self.root / "tmp"
        for d in (self._roots, self._locks, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> ImageState | None:
        """The built layer ``key``, or None when it is not in the cache."""
        entry = self._roots / key
        try:
            meta = json.loads((entry / "image.json").read_text())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(OSError):
            os.utime(entry / "use.lock")  # last use, for prune
        return ImageState(
            key=key,
            rootfs=entry / "rootfs",
            env=dict(meta.get("env") or {}),
            workdir=meta.get("workdir"),
            shell=tuple(meta.get("shell") or DEFAULT_SHELL),
            lock_path=entry / "use.lock",
            description=str(meta.get("description") or ""),
        )

    def lock_file(self, key: str) -> str:
        """The file to flock while building ``key`` (see :class:`filelock.FileLock`)."""
        return str(self._locks / f"{key}.lock")

    def staging(self, key: str) -> Path:
        """A fresh directory to build ``key`` in; its ``rootfs/`` becomes the layer's root."""
        path = self._tmp / f"{key}-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def sweep(self) -> list[str]:
        """Remove what interrupted builds left in ``tmp/`` (an emulator killed mid-build):
        a staging dir whose key nobody is building now (its lock is free) is stale."""
        removed = []
        for leftover in self._tmp.iterdir():
            key = leftover.name.split("-", 1)[0]
            if leftover.name.startswith("trash-"):
                remove_tree(leftover)
                removed.append(leftover.name)
                continue
            lock = FileLock(self.lock_file(key), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # being built right now
            try:
                remove_tree(leftover)
                removed.append(leftover.name)
            finally:
                lock.release()
        return removed

    def commit(self, staging: Path, state: ImageState, meta: Mapping[str, Any]) -> ImageState:
        """Move a finished build into place (the caller holds the key's lock)."""
        entry = self._roots / state.key
        record = dict(meta)
        record.update(
            key=state.key,
            env=dict(state.env),
            workdir=state.workdir,
            shell=list(state.shell),
            description=state.description,
            built_at=time.time(),
        )
        (staging / "image.json").write_text(json.dumps(record, indent=1))
        (staging / "use.lock").touch()
        if entry.exists():  # a forced rebuild replaces the old one
            trash = self._tmp / f"trash-{secrets.token_hex(6)}"
            os.rename(entry, trash)
            remove_tree(trash)
        os.rename(staging, entry)
        built = self.lookup(state.key)
        assert built is not None
        return built

    def discard(self, staging: Path) -> None:
        remove_tree(staging)

    def prune(self, *, unused_for: float = 0.0) -> list[str]:
        """Remove built layers not used for ``unused_for`` seconds and not in use right now;
        returns their keys.  Leftovers of interrupted builds go too."""
        removed = []
        now = time.time()
        for entry in sorted(self._roots.iterdir()):
            lock = entry / "use.lock"
            try:
                if now - lock.stat().st_mtime < unused_for:
                    continue
                fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                trash = self._tmp / f"trash-{secrets.token_hex(6)}"
                os.rename(entry, trash)
                remove_tree(trash)
                removed.append(entry.name)
            except OSError:  # in use (or gone meanwhile)
                continue
            finally:
                if fd >= 0:
                    os.close(fd)
        self.sweep()
        return removed
