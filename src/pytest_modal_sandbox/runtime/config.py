"""What a local sandbox is asked to be (``SandboxConfig``) and what comes back from it.

``SandboxConfig`` validates itself at construction and raises :class:`InvalidConfig` naming
the field and the value, so a bad value never reaches bubblewrap as a cryptic failure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..spec import FrozenMap, parse_cidrs
from .errors import InvalidConfig

__all__ = ["DEFAULT_ENV", "ExecOutcome", "ExitKind", "ExitStatus", "SandboxConfig"]

DEFAULT_ENV: Mapping[str, str] = FrozenMap(
    {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
    }
)

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # Modal's rule for object names
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?$")

ExitKind = Literal["success", "failure", "terminated", "timeout", "idle_timeout"]
EXIT_KINDS: tuple[str, ...] = ("success", "failure", "terminated", "timeout", "idle_timeout")


def _fail(field: str, value: object, why: str) -> InvalidConfig:
    return InvalidConfig(f"SandboxConfig.{field}={value!r}: {why}")


def _text(field: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(field, value, f"must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise _fail(field, value, "must not contain NUL characters")
    if not allow_empty and not value:
        raise _fail(field, value, "must not be empty")
    return value


def _str_map(field: str, value: object, *, env: bool = False) -> FrozenMap:
    if not isinstance(value, Mapping):
        raise _fail(field, value, f"must be a mapping of str to str, not {type(value).__name__}")
    out: dict[str, str] = {}
    for key, item in value.items():
        k = _text(f"{field}[{key!r}]", key)
        if env and "=" in k:
            raise _fail(field, value, f"key {k!r} must not contain '='")
        out[k] = _text(f"{field}[{key!r}]", item, allow_empty=True)
    return FrozenMap(out)


def _seconds(field: str, value: object, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, value, "must be a number of seconds" + (" or None" if optional else ""))
    if not math.isfinite(value) or value <= 0:
        raise _fail(field, value, "must be a positive, finite number of seconds")
    return float(value)


def _path(field: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _text(field, value)


def _mounts(value: object) -> FrozenMap:
    if not isinstance(value, Mapping):
        raise _fail("mounts", value, "must map paths in the sandbox to paths on this machine")
    out: dict[str, str] = {}
    for target, source in value.items():
        where = f"mounts[{target!r}]"
        target = _text(where, target)
        norm = posixpath.normpath(target).replace("//", "/")
        if not target.startswith("/") or norm == "/":
            raise _fail(where, target, "the path in the sandbox must be absolute, and not /")
        src = _path(where, source)
        if src is None or not os.path.isabs(src):
            raise _fail(where, source, "the source must be an absolute path on this machine")
        if not (os.path.isdir(src) or os.path.isfile(src)):
            raise _fail(where, source, "the source is not a file or directory")
        if norm in out:
            raise _fail(where, target, "the path in the sandbox is mounted twice")
        out[norm] = src
    return FrozenMap(out)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Everything needed to start one local sandbox (the runtime's half of a Modal create call).

    ``command=None`` keeps the sandbox alive (a ``sleep``) until it is terminated or times out,
    as Modal does.  ``env`` is applied on top of :data:`DEFAULT_ENV`.  ``workdir`` is absolute;
    when it is not ``/`` it is a fresh per-sandbox writable directory.  ``owner_lock`` ties the
    sandbox's life to whoever holds an exclusive ``flock`` on that file (default: the creating
    process).  ``rootfs`` is an unpacked image root used read-only: the sandbox gets a private
    writable view of it; without one the sandbox gets a private view of the host's root
    (``hostview.py``; writable as root).  Whatever the config, the sandbox is walled in the
    same way (``docs/reference/local-walls.md``).

    Image builds (the emulator's ``RUN`` steps) need two more things: ``rootfs_writable=True``
    runs directly on ``rootfs``, writable, and keeps the changes (no private view; the caller
    owns that directory and must not share it); ``network=True`` shares the host's network
    namespace (package indexes are reachable; the host's ``/etc/resolv.conf`` is used), so it
    takes no ``ports``.  A sandbox is never isolated from the network with it: builds only.

    Otherwise a sandbox has a network of its own and, as on Modal, reaches out through a
    user-mode network stack (``egress.py``): ``block_network=True`` leaves it loopback only
    (its ``ports`` still reachable through tunnels); ``cidr_allowlist`` (CIDR strings) lets it reach
    only those networks.  The host's own loopback is never reachable from it.

    ``layers`` start the sandbox from a snapshot (``runtime/snapshot.py``): ``(target, dir)``
    pairs, newest first, each a captured copy-on-write layer stacked over the root's layer that
    is mounted at ``target`` (``/`` for an image root).  They need overlayfs.

    ``mounts`` maps absolute paths in the sandbox to files or directories of this machine,
    shown there writable: a directory through an overlayfs with the sandbox's own upper
    layer, a file (or a directory where overlayfs is not usable) as a private copy
    (``copies.py``); writes inside never reach the source, and vanish with the sandbox.
    """

    command: Sequence[str] | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    workdir: str | None = None
    timeout: float = 300.0
    idle_timeout: float | None = None
    ports: Sequence[int] = ()
    app: str = "local"
    name: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    owner_lock: str | None = None
    stdin_pipe: bool = False
    rootfs: str | None = None
    hostname: str | None = None
    rootfs_writable: bool = False
    network: bool = False
    block_network: bool = False
    cidr_allowlist: Sequence[str] | None = None

    @property
    def egress(self) -> bool:
        """Whether the sandbox gets a network stack of its own (slirp4netns)."""
        return not self.network and not self.block_network

    layers: Sequence[tuple[str, str]] = ()

    mounts: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.command is not None:
            if isinstance(self.command, (str, bytes)) or not isinstance(self.command, Sequence):
                raise _fail("command", self.command, "must be a sequence of str (an argv list)")
            if not self.command:
                raise _fail("command", self.command, "must not be empty (use None to sleep)")
            put(self, "command", tuple(_text("command", a, allow_empty=True) for a in self.command))
            if not self.command[0]:
                raise _fail("command", self.command, "the program name must not be empty")
        put(self, "env", _str_map("env", self.env, env=True))
        if self.workdir is not None:
            wd = _text("workdir", self.workdir)
            if not wd.startswith("/"):
                raise _fail("workdir", wd, "must be an absolute path")
            put(self, "workdir", posixpath.normpath(wd).replace("//", "/"))
        put(self, "timeout", _seconds("timeout", self.timeout, optional=False))
        put(self, "idle_timeout", _seconds("idle_timeout", self.idle_timeout, optional=True))
        if isinstance(self.ports, (str, bytes)) or not isinstance(self.ports, Sequence):
            raise _fail("ports", self.ports, "must be a sequence of port numbers")
        ports: list[int] = []
        for port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise _fail("ports", self.ports, f"{port!r} is not a port number (1-65535)")
            if port in ports:
                raise _fail("ports", self.ports, f"port {port} is listed twice")
            ports.append(port)
        put(self, "ports", tuple(ports))
        _text("app", self.app)
        if self.name is not None and not (isinstance(self.name, str) and _NAME.match(self.name)):
            raise _fail(
                "name", self.name, "must be 1-64 letters, digits, '.', '-' or '_' (or None)"
            )
        put(self, "tags", _str_map("tags", self.tags))
        put(self, "owner_lock", _path("owner_lock", self.owner_lock))
        if not isinstance(self.stdin_pipe, bool):
            raise _fail("stdin_pipe", self.stdin_pipe, "must be True or False")
        put(self, "rootfs", _path("rootfs", self.rootfs))
        if self.rootfs is not None and not self.rootfs.startswith("/"):
            put(self, "rootfs", os.path.abspath(self.rootfs))
        for flag in ("rootfs_writable", "network", "block_network"):
            if not isinstance(getattr(self, flag), bool):
                raise _fail(flag, getattr(self, flag), "must be True or False")
        if self.rootfs_writable and self.rootfs is None:
            raise _fail("rootfs_writable", True, "needs a rootfs (the directory to change)")
        if self.network and self.ports:
            raise _fail(
                "ports", self.ports, "cannot be forwarded with network=True (the host's network)"
            )
        if self.network and self.block_network:
            raise _fail("block_network", True, "contradicts network=True (the host's network)")
        try:
            put(self, "cidr_allowlist", parse_cidrs(self.cidr_allowlist))
        except ValueError as exc:
            raise _fail("cidr_allowlist", self.cidr_allowlist, str(exc)) from None
        if self.cidr_allowlist is not None and (self.block_network or self.network):
            flag = "block_network" if self.block_network else "network"
            raise _fail(
                "cidr_allowlist", list(self.cidr_allowlist), f"cannot be used with {flag}=True"
            )
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
            raise _fail("layers", self.layers, "must be a sequence of (target, directory) pairs")
        layers: list[tuple[str, str]] = []
        for pair in self.layers:
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise _fail("layers", self.layers, f"{pair!r} is not a (target, directory) pair")
            target, directory = _text("layers", pair[0]), _path("layers", pair[1])
            if not target.startswith("/") or directory is None or not directory.startswith("/"):
                raise _fail("layers", self.layers, f"{pair!r}: both must be absolute paths")
            layers.append((target, directory))
        put(self, "layers", tuple(layers))
        if self.layers and self.rootfs_writable:
            raise _fail("layers", self.layers, "cannot be stacked under rootfs_writable")
        put(self, "mounts", _mounts(self.mounts))
        if self.hostname is not None and not (
            isinstance(self.hostname, str) and _HOSTNAME.match(self.hostname)
        ):
            raise _fail("hostname", self.hostname, "must be a valid host name (1-64 characters)")


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a sandbox ended.

    ``exitcode`` is the entrypoint's code (128+N when killed by signal N) for ``success`` and
    ``failure``; ``None`` when the sandbox was ended from outside.
    """

    kind: ExitKind
    exitcode: int | None
    finished_at: float

    def describe(self) -> str:
        """A short human phrase: ``"failure (exit code 3)"``, ``"timeout"``."""
        if self.exitcode is None:
            return self.kind
        return f"{self.kind} (exit code {self.exitcode})"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExitStatus:
        kind = data.get("kind")
        if kind not in EXIT_KINDS:
            raise ValueError(f"unknown exit kind {kind!r}")
        code = data.get("exitcode")
        return cls(kind, None if code is None else int(code), float(data["finished_at"]))


@dataclasses.dataclass(frozen=True)
class ExecOutcome:
    """The result of one finished exec: exit code (128+N for signal N, -1 on timeout), output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
