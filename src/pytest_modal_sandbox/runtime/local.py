"""``LocalRuntime``: create, find and list local sandboxes under one state dir."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import marshal
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import errors
from .._paths import state_root
from . import egress, forkserver, hostview, owners, rootfs, seccomp, spare
from .check import Tools, check
from .config import DEFAULT_ENV, SandboxConfig
from .copies import prepare_mounts
from .errors import InvalidArgument, InvalidConfig, NameTaken, SandboxNotFound
from .forkserver import KeeperProc, start_keeper
from .ids import is_sandbox_id, new_sandbox_id
from .mounts import (
    BLOCK_FD,
    SECCOMP_FD,
    USERNS2_FD,
    bwrap_argv,
    hosts_file,
    merged_env,
    resolve_in_root,
)
from .sandbox import LocalSandbox
from .store import SandboxPaths, read_json, remove_tree, write_json

__all__ = ["KEEP_FINISHED", "LocalRuntime"]

START_TIMEOUT = 30.0
KEEP_FINISHED = 15 * 60.0  # how long records of finished sandboxes stay (get() still answers)
GC_EVERY = 60.0
ORPHAN_AGE = 300.0  # a directory without meta.json this old is a failed or abandoned start


class LocalRuntime:
    """Sandboxes of this machine, recorded under ``state_dir``.

    ``state_dir`` defaults to ``state_root() / "local"``; every process that uses the same
    directory sees the same sandboxes.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        keep_finished: float = KEEP_FINISHED,
    ) -> None:
        self.root = Path(state_dir) if state_dir is not None else state_root() / "local"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keep_finished = keep_finished
        self._last_gc = 0.0

    def __repr__(self) -> str:
        return f"<LocalRuntime {self.root}>"

    @staticmethod
    def check() -> None:
        """Raise :class:`RuntimeUnavailable` (with the fix) if sandboxes cannot run here."""
        check()

    # --- create ---------------------------------------------------------------------------

    def create(self, config: SandboxConfig) -> LocalSandbox:
        """Start a sandbox; returns once it runs (its root is set up, the entrypoint started)."""
        if not isinstance(config, SandboxConfig):
            raise InvalidArgument(f"config must be a SandboxConfig, not {type(config).__name__}")
        tools = check()
        owners.reap()
        self._maybe_gc()
        if config.owner_lock is not None:
            _require_lock_held(config.owner_lock)
        if config.rootfs is not None and not os.path.isdir(config.rootfs):
            raise InvalidConfig(f"SandboxConfig.rootfs={config.rootfs!r}: not a directory")
        use_overlay = (
            config.rootfs is not None
            and not config.rootfs_writable
            and rootfs.overlay_usable(config.rootfs)
        )
        overlay_mounts = all(
            rootfs.overlay_usable(src) for src in config.mounts.values() if os.path.isdir(src)
        )
        try:
            return self._create(config, tools, use_overlay, overlay_mounts)
        except _OverlayRefused as exc:
            rootfs.remember_overlay_failure(str(exc))
            return self._create(config, tools, False, False)

    def _create(
        self, config: SandboxConfig, tools: Tools, use_overlay: bool, overlay_mounts: bool
    ) -> LocalSandbox:
        sandbox_id = new_sandbox_id()
        paths = SandboxPaths(self.root, sandbox_id)
        paths.dir.mkdir(mode=0o700)
        pipes = _Pipes()
        keeper: KeeperProc | None = None
        try:
            with contextlib.ExitStack() as stack:
                launch, meta = self._prepare(
                    config, paths, tools, pipes, use_overlay, overlay_mounts
                )
                if config.name is not None:
                    stack.enter_context(self._name_claim(config.app, config.name))
                with open(paths.launch, "wb") as f:
                    marshal.dump(launch, f)
                with open(paths.keeper_log, "ab") as log:
                    keeper = start_keeper(
                        paths.launch,
                        pipes.named_child_ends(),
                        log.fileno(),
                        spare.profile_of(launch),
                    )
                pipes.close_child_ends()
                ready = _read_ready(pipes, keeper, paths)
                if "error" in ready and ready.get("overlay_refused"):
                    raise _OverlayRefused(ready["error"])
                if "error" in ready:
                    raise errors.SandboxStartError(
                        f"sandbox {sandbox_id} failed to start: {ready['error']}"
                    )
                meta.update(keeper=ready["keeper"], init=ready["init"], bwrap=ready["bwrap"])
                meta["started_ahead"] = bool(ready.get("ahead"))
                write_json(paths.meta, meta)
            owners.register(sandbox_id, owners.Owned(keeper, pipes.owner_w, pipes.stdin_w))
            pipes.owner_w = pipes.stdin_w = None  # owned by the table now
            pipes.close_all()
            return LocalSandbox(self.root, meta, tools)
        except BaseException:
            pipes.close_all()
            if keeper is not None:
                with contextlib.suppress(OSError):
                    os.killpg(keeper.pid, signal.SIGKILL)  # it leads its own session
                keeper.wait(10)
            remove_tree(paths.dir)
            raise

    def _prepare(
        self,
        config: SandboxConfig,
        paths: SandboxPaths,
        tools: Tools,
        pipes: _Pipes,
        use_overlay: bool,
        overlay_mounts: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Files, pipes and the keeper's launch record for a new sandbox."""
        sandbox_id = paths.dir.name
        hostname = config.hostname or sandbox_id.lower()
        workdir = config.workdir or "/"
        env = merged_env(DEFAULT_ENV, config.env)
        command = list(config.command or ["sleep", str(int(config.timeout) + 60)])
        as_root = os.geteuid() == 0
        if config.idle_timeout is not None:  # only the idle clock reads them (activity.py)
            paths.activity.mkdir()
            paths.last_activity.touch()
        host_workdir = None
        hosts: str | None = str(paths.hosts)
        view: dict[str, Any] | None = None
        readonly_root = False
        exists: Callable[[str], bool] = os.path.isdir
        listdir: Callable[[str], list[str]] = os.listdir
        if config.rootfs is None:
            if workdir != "/" and os.path.lexists(workdir) and not os.path.isdir(workdir):
                raise InvalidConfig(
                    f"SandboxConfig.workdir={workdir!r}: exists on the host and is not a "
                    "directory, so it cannot be the sandbox's working directory"
                )
            if as_root:  # a private copy-on-write view of the host's root
                root = rootfs.overlay_root(paths)
                paths.ovl.mkdir()
                view = hostview.overlay_plan(
                    root=root,
                    ovl=str(paths.ovl),
                    workdir=workdir,
                    hosts=hosts_file(hostname).encode(),
                    state_dirs=(str(self.root),),
                    resolv=egress.RESOLV_CONF.encode() if config.egress else None,
                    snapshot=tuple(config.layers),
                )
                hosts = None  # written into the view, writable
            else:  # the host's root read-only, hidden paths covered
                root = str(paths.rootfs)
                paths.rootfs.mkdir()
                if config.layers:
                    raise InvalidConfig(
                        "SandboxConfig.layers: a snapshot of the host's root needs root "
                        "(not as root the host view is read-only); give the sandbox an image"
                    )
                paths.empty.touch(mode=0o444)
                view = hostview.masks_plan(
                    root=root, empty_file=str(paths.empty), state_dirs=(str(self.root),)
                )
                masks: list[list[str]] = view["masks"]  # type: ignore[assignment]
                exists, listdir = _masked_view([p for kind, p in masks if kind == "dir"])
                readonly_root = True
                if workdir != "/":
                    paths.workdir.mkdir()
                    host_workdir = str(paths.workdir)
        elif config.rootfs_writable:  # an image build: the root itself, changes kept
            root = config.rootfs
        else:
            stacked = tuple(d for target, d in config.layers if target == "/")
            view = rootfs.prepare(config.rootfs, paths, overlay=use_overlay, snapshot=stacked)
            root = str(view["root"]) if view else str(paths.rootfs)
        if hosts is not None:
            paths.hosts.write_text(hosts_file(hostname))
        resolv = None
        if config.rootfs is not None:
            if config.network and os.path.exists(rootfs.HOST_RESOLV_CONF):
                resolv = rootfs.HOST_RESOLV_CONF
            else:
                resolv = str(paths.resolv)
                paths.resolv.write_text(egress.RESOLV_CONF if config.egress else rootfs.RESOLV_CONF)
        net: dict[str, Any] | None = None
        if config.egress:
            net = {
                "slirp": tools.require_slirp4netns(),
                "as_root": as_root,
                "routes": _routes(config.cidr_allowlist),
                "early": as_root,  # the keeper makes the network namespace (keeper.py)
            }
        program = _seccomp_program()
        # a snapshot's /tmp is in its layers (captured with the rest of the root)
        private_tmp = (
            config.rootfs is not None
            and not config.layers
            and not (config.rootfs_writable and _has_tmp(config.rootfs))
        )
        binds, mount_overlays = prepare_mounts(config.mounts, paths.mounts, overlay=overlay_mounts)
        argv = bwrap_argv(
            bwrap=tools.bwrap,
            command=command,
            hostname=hostname,
            workdir=workdir,
            userns="pair" if as_root else "own",
            root=root,
            readonly_root=readonly_root,
            host_workdir=host_workdir,
            hosts_path=hosts,
            resolv_path=resolv,
            share_net=config.network,
            own_net=not (net is not None and as_root),
            private_tmp=private_tmp,
            seccomp=program is not None,
            block=net is not None,
            exists=exists,
            listdir=listdir,
            binds=binds,
        )
        walls = {
            "userns": "pair" if as_root else "own",
            "limits": _namespace_limits(
                as_root=as_root, network=config.network or (net is not None and as_root)
            ),
            "userns2_fd": USERNS2_FD,
            "seccomp_fd": SECCOMP_FD,
            "seccomp": program,
            "block_fd": BLOCK_FD,
            "host_mounts": spare.host_mounts() if as_root else None,
        }
        pipes.ready_r, pipes.ready_w = os.pipe()
        if config.owner_lock is None:
            pipes.owner_r, pipes.owner_w = os.pipe()
        if config.stdin_pipe:
            pipes.stdin_r, pipes.stdin_w = os.pipe()
        launch: dict[str, Any] = {
            "bwrap_argv": argv,
            "env": env,
            "stdout": str(paths.stdout),
            "stderr": str(paths.stderr),
            "stdin_fd": pipes.stdin_r,
            "owner_fd": pipes.owner_r,
            "owner_lock": config.owner_lock,
            "ready_fd": pipes.ready_w,
            "timeout": config.timeout,
            "idle_timeout": config.idle_timeout,
            "activity_dir": str(paths.activity),
            "last_activity": str(paths.last_activity),
            "detached": str(paths.detached),
            "result": str(paths.result),
            "cleanup": [str(p) for p in paths.writable() if str(p) != config.rootfs],
            "view": view,
            "mount_overlays": mount_overlays,
            "walls": walls,
            "net": net,
        }
        meta: dict[str, Any] = {
            "id": sandbox_id,
            "app": config.app,
            "name": config.name,
            "created_at": time.time(),
            "hostname": hostname,
            "command": command,
            "env": env,
            "workdir": workdir,
            "ports": list(config.ports),
            "timeout": config.timeout,
            "idle_timeout": config.idle_timeout,
            "owner": config.owner_lock or f"pid {os.getpid()}",
            "stdin_pipe": config.stdin_pipe,
            "rootfs": config.rootfs,
            "rootfs_mode": (
                None
                if config.rootfs is None
                else "in-place"
                if config.rootfs_writable
                else "overlay"
                if view
                else "copy"
            ),
            "network": config.network,
            "egress": config.egress,
            "cidr_allowlist": config.cidr_allowlist,
            "tags": dict(config.tags),
            "layers": [list(pair) for pair in config.layers],
            "uppers": _upper_targets(view),
            "private_tmp": private_tmp,
            "userns": walls["userns"],
            "creator_pid": os.getpid(),
        }
        return launch, meta

    @contextlib.contextmanager
    def _name_claim(self, app: str, name: str) -> Iterator[None]:
        """Hold the app's name lock while checking the name and starting the sandbox."""
        digest = hashlib.sha256(app.encode()).hexdigest()[:16]
        fd = os.open(self.root / f".names-{digest}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for other in self._records():
                if other.app == app and other.name == name and other.poll() is None:
                    raise NameTaken(
                        f"app {app!r} already has a running sandbox named {name!r} ({other.id})"
                    )
            yield
        finally:
            os.close(fd)

    # --- lookup ---------------------------------------------------------------------------

    def _records(self) -> Iterator[LocalSandbox]:
        tools = check()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            if not is_sandbox_id(entry.name):
                continue
            meta = read_json(Path(entry.path) / "meta.json")
            if isinstance(meta, dict):
                yield LocalSandbox(self.root, meta, tools)

    def get(self, sandbox_id: str) -> LocalSandbox:
        """The sandbox with this id, running or finished; :class:`SandboxNotFound` if unknown."""
        if not isinstance(sandbox_id, str) or not is_sandbox_id(sandbox_id):
            raise SandboxNotFound(f"no local sandbox has the id {sandbox_id!r}")
        meta = read_json(self.root / sandbox_id / "meta.json")
        if not isinstance(meta, dict):
            raise SandboxNotFound(f"no local sandbox has the id {sandbox_id!r} (in {self.root})")
        owners.reap()
        return LocalSandbox(self.root, meta, check())

    def from_name(self, app: str, name: str, *, include_finished: bool = False) -> LocalSandbox:
        """The running sandbox of ``app`` named ``name`` (with ``include_finished``, else the
        most recent finished one)."""
        for sandbox in self.list(app=app, include_finished=include_finished):
            if sandbox.name == name:
                return sandbox
        raise SandboxNotFound(f"app {app!r} has no running sandbox named {name!r}")

    def list(
        self,
        *,
        app: str | None = None,
        tags: Mapping[str, str] | None = None,
        include_finished: bool = False,
    ) -> list[LocalSandbox]:
        """Sandboxes, newest first; ``tags`` must all match; running ones unless asked."""
        owners.reap()
        found = []
        for sandbox in self._records():
            if app is not None and sandbox.app != app:
                continue
            if tags:
                have = sandbox.tags()
                if any(have.get(k) != v for k, v in tags.items()):
                    continue
            if not include_finished and sandbox.poll() is not None:
                continue
            found.append(sandbox)
        found.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return found

    def close(self) -> None:
        """Close the tunnel listeners this process opened for sandboxes of this runtime, and
        end the sandboxes it started ahead here (``warm.py``)."""
        owners.reap()
        forkserver.release(self.root)
        if "pytest_modal_sandbox.runtime.tunnels" in sys.modules:
            from . import tunnels

            tunnels.close_under(self.root)

    # --- garbage collection -----------------------------------------------------------------

    def _maybe_gc(self) -> None:
        now = time.monotonic()
        if now - self._last_gc >= GC_EVERY:
            self._last_gc = now
            self.gc()

    def gc(self, *, keep_finished: float | None = None) -> builtins.list[str]:
        """Remove records of sandboxes finished longer than ``keep_finished`` seconds ago, and
        leftovers of failed starts; returns the removed ids."""
        keep = self.keep_finished if keep_finished is None else keep_finished
        removed: builtins.list[str] = []
        now = time.time()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not is_sandbox_id(entry.name):
                continue
            path = Path(entry.path)
            meta = read_json(path / "meta.json")
            if not isinstance(meta, dict):
                try:
                    age = now - entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > ORPHAN_AGE:
                    remove_tree(path)
                    removed.append(entry.name)
                continue
            sandbox = LocalSandbox(self.root, meta, check())
            status = sandbox.poll()
            old = status is not None and now - status.finished_at >= keep
            if old and sandbox.wait(0) is not None:  # and its keeper has exited
                remove_tree(path)
                removed.append(entry.name)
        return removed


_program: list[bytes | None] = []


def _upper_targets(view: dict[str, Any] | None) -> list[str | None] | None:
    """Where each upper layer of an overlay view is mounted (by index; None: not an overlay),
    for a snapshot to find what the sandbox wrote; None when the root is no overlay."""
    if view is None or view.get("kind") != "overlay":
        return None
    layers: list[dict[str, Any]] = view["layers"]
    return [str(layer["target"]) if layer["mode"] == "overlay" else None for layer in layers]


def _seccomp_program() -> bytes | None:
    """The seccomp filter of this machine's architecture (built once per process)."""
    if not _program:
        _program.append(seccomp.program())
    return _program[0]


def _namespace_limits(*, as_root: bool, network: bool) -> dict[str, int]:
    """``user.max_*_namespaces`` of the user namespace the sandbox is nested in: exactly what
    bwrap creates there (not as root, also the keeper's own mount namespace), so the sandbox
    can create none (``userns.py``).  ``network``: bwrap makes no network namespace (the
    host's, for builds; as root with egress, the keeper's own)."""
    limits = {"user": 1, "mnt": 1, "pid": 1, "net": 0 if network else 1, "ipc": 1, "uts": 1}
    limits.update(cgroup=1, time=0)
    if not as_root:
        limits["mnt"] = 2
    return limits


def _routes(allowlist: Sequence[str] | None) -> list[tuple[str, int]] | None:
    """The IPv4 networks an allowlisted sandbox is routed to (None: every one).  IPv6 entries
    are accepted and have no effect: the sandbox has no IPv6 egress."""
    if allowlist is None:
        return None
    out = []
    for cidr in allowlist:
        address, _, prefix = cidr.partition("/")
        if ":" not in address:
            out.append((address, int(prefix)))
    return out


def _masked_view(
    masked: list[str],
) -> tuple[Callable[[str], bool], Callable[[str], list[str]]]:
    """``isdir`` and ``listdir`` of the host's root as the non-root view shows it: each masked
    directory exists and is empty."""

    def hidden(path: str) -> bool:
        return any(path.startswith(m.rstrip("/") + "/") for m in masked)

    def exists(path: str) -> bool:
        return path in masked or (os.path.isdir(path) and not hidden(path))

    def listdir(path: str) -> list[str]:
        return [] if path in masked or hidden(path) else os.listdir(path)

    return exists, listdir


def _has_tmp(root: str | None) -> bool:
    """Whether an image root has a ``/tmp`` of its own (a build keeps it; else a tmpfs)."""
    if root is None:
        return False
    try:
        return os.path.isdir(resolve_in_root(root, "/tmp"))
    except OSError:
        return False


def _require_lock_held(path: str) -> None:
    """``owner_lock`` must be held (exclusively) by someone now, or the sandbox would die."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidConfig(f"SandboxConfig.owner_lock={path!r}: cannot open it: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    finally:
        os.close(fd)
    raise InvalidConfig(
        f"SandboxConfig.owner_lock={path!r}: nobody holds an exclusive flock on it, "
        "so the sandbox would end at once"
    )


def _read_ready(pipes: _Pipes, keeper: KeeperProc, paths: SandboxPaths) -> dict[str, Any]:
    """The keeper's start-up report (or its error), read until it closes the pipe."""
    assert pipes.ready_r is not None
    data = b""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.SandboxStartError(
                f"the sandbox keeper did not report within {START_TIMEOUT:.0f} s "
                f"(log: {paths.keeper_log})"
            )
        if not select.select([pipes.ready_r], [], [], remaining)[0]:
            continue
        chunk = os.read(pipes.ready_r, 65536)
        if not chunk:
            break
        data += chunk
    if not data:
        keeper.wait(10)
        log = paths.keeper_log.read_text(errors="replace").strip().splitlines()[-5:]
        raise errors.SandboxStartError(
            "the sandbox keeper exited before the sandbox started: " + " | ".join(log)
        )
    report = marshal.loads(data)
    if not isinstance(report, dict):
        raise errors.SandboxStartError(f"unexpected report from the sandbox keeper: {report!r}")
    return report


class _OverlayRefused(Exception):
    """The keeper could not mount overlayfs here: use a copy of the root instead."""


class _Pipes:
    """The pipes between creator and keeper; child ends go to the keeper, then are closed."""

    def __init__(self) -> None:
        self.ready_r: int | None = None
        self.ready_w: int | None = None
        self.owner_r: int | None = None
        self.owner_w: int | None = None
        self.stdin_r: int | None = None
        self.stdin_w: int | None = None

    def child_ends(self) -> list[int]:
        return [fd for fd in (self.ready_w, self.owner_r, self.stdin_r) if fd is not None]

    def named_child_ends(self) -> dict[str, int]:
        """The keeper's ends by their names in the launch record (``keeper.FD_NAMES``)."""
        ends = {"ready_fd": self.ready_w, "owner_fd": self.owner_r, "stdin_fd": self.stdin_r}
        return {name: fd for name, fd in ends.items() if fd is not None}

    def close_child_ends(self) -> None:
        for fd in self.child_ends():
            os.close(fd)
        self.ready_w = self.owner_r = self.stdin_r = None

    def close_all(self) -> None:
        for name in ("ready_r", "ready_w", "owner_r", "owner_w", "stdin_r", "stdin_w"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)
