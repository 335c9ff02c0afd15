"""The declarative sandbox spec: what a test asks for, validated before anything starts.

``Daemon`` and ``Probe`` only hold their values; ``SandboxSpec`` validates the whole tree at
construction and raises :class:`~pytest_modal_sandbox.errors.SpecError` naming the field path
(``daemons[1].ready.port``) and the offending value.  Keeping the leaves lenient is deliberate:
a bad ``Daemon(...)`` inside a marker must become one per-test error at setup, not an import
error that takes the whole module down.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from .errors import SpecError
from .snapshot import Snapshot

__all__ = ["Daemon", "FrozenMap", "Probe", "SandboxSpec", "parse_cidrs", "spec_from_fields"]

MAX_TIMEOUT = 24 * 60 * 60  # Modal's maximum sandbox lifetime
DEFAULT_TIMEOUT = 600
DEFAULT_PROBE_TIMEOUT = 60.0
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DAEMON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ProbeKind = Literal["tcp", "http", "log", "exec"]


class FrozenMap(Mapping[str, str]):
    """An immutable, hashable ``str -> str`` mapping (insertion order kept)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: dict[str, str] = dict(pairs)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return repr(self._items)


@dataclasses.dataclass(frozen=True)
class Probe:
    """A readiness check for one daemon.  Build it with the class methods.

    Every probe has a ``timeout`` (seconds) after which the sandbox fails to start with
    :class:`~pytest_modal_sandbox.errors.ReadinessTimeout`.
    """

    kind: ProbeKind
    port: int | None = None
    path: str = "/"
    status: int = 200
    pattern: str | None = None
    argv: tuple[str, ...] = ()
    timeout: float = DEFAULT_PROBE_TIMEOUT

    @classmethod
    def tcp(cls, port: int, *, timeout: float = DEFAULT_PROBE_TIMEOUT) -> Probe:
        """Ready when something LISTENs on ``port`` inside the sandbox (read from /proc/net/tcp)."""
        return cls("tcp", port=port, timeout=timeout)

    @classmethod
    def http(
        cls,
        port: int,
        path: str = "/",
        status: int = 200,
        *,
        timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> Probe:
        """Ready when ``GET path`` through the port's tunnel answers ``status``."""
        return cls("http", port=port, path=path, status=status, timeout=timeout)

    @classmethod
    def log(cls, pattern: str, *, timeout: float = DEFAULT_PROBE_TIMEOUT) -> Probe:
        """Ready when the daemon's log matches the regular expression ``pattern``."""
        return cls("log", pattern=pattern, timeout=timeout)

    @classmethod
    def exec(cls, *argv: str, timeout: float = DEFAULT_PROBE_TIMEOUT) -> Probe:
        """Ready when ``argv``, run inside the sandbox, exits 0."""
        return cls("exec", argv=tuple(argv), timeout=timeout)

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"tcp port {self.port}"
        if self.kind == "http":
            return f"http GET {self.path} on port {self.port} answering {self.status}"
        if self.kind == "log":
            return f"log line matching {self.pattern!r}"
        return f"exec {' '.join(self.argv)!r} exiting 0"


@dataclasses.dataclass(frozen=True, init=False)
class Daemon:
    """A long-running process the sandbox must run, started detached, with a log file.

    ``command`` is a shell string (run by ``sh -c``) or an argv list.  ``restart=True`` runs it
    again whenever it exits.  :meth:`from_image` makes one that runs the image's own
    ENTRYPOINT + CMD (``entrypoint`` is then True, ``args`` replace CMD, and ``command`` is
    filled in from the image's config when the sandbox starts).
    """

    name: str
    command: str | tuple[str, ...]
    ready: Probe | None
    env: FrozenMap
    workdir: str | None
    restart: bool
    entrypoint: bool
    args: tuple[str, ...] | None

    def __init__(
        self,
        name: str,
        command: str | Sequence[str],
        ready: Probe | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        restart: bool = False,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "command", command if isinstance(command, str) else _maybe_tuple(command))
        set_(self, "ready", ready)
        set_(self, "env", _maybe_frozen(env or {}))
        set_(self, "workdir", workdir)
        set_(self, "restart", restart)
        set_(self, "entrypoint", False)
        set_(self, "args", None)

    @classmethod
    def from_image(
        cls,
        name: str,
        *,
        args: Sequence[str] | None = None,
        ready: Probe | None = None,
        env: Mapping[str, str] | None = None,
        restart: bool = False,
    ) -> Daemon:
        """A daemon that runs the sandbox image's own ENTRYPOINT + CMD, in the image's workdir
        with the image's env, as ``docker run IMAGE [args]`` does: ``args`` replace CMD (never
        ENTRYPOINT), ``env`` is set on top.  The image's config is read from its registry
        when the sandbox starts (once per image; cached)."""
        daemon = cls(name, (), ready=ready, env=env, restart=restart)
        object.__setattr__(daemon, "entrypoint", True)
        object.__setattr__(daemon, "args", None if args is None else _maybe_tuple(args))
        return daemon

    @property
    def shell_command(self) -> str:
        """The command as one POSIX shell string."""
        if isinstance(self.command, str):
            return self.command
        return " ".join(shell_quote(a) for a in self.command)


def shell_quote(arg: str) -> str:
    """Quote ``arg`` for a POSIX shell (``shlex.quote`` without importing shlex)."""
    if arg and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """Everything a test declares about its sandbox; the marker takes the same fields.

    Immutable and hashable; :attr:`spec_hash` is stable across processes for specs whose image
    is a string (``modal.Image`` objects hash by identity).
    """

    image: Any = None
    daemons: tuple[Daemon, ...] = ()
    encrypted_ports: tuple[int, ...] = ()
    unencrypted_ports: tuple[int, ...] = ()
    h2_ports: tuple[int, ...] = ()
    env: FrozenMap = dataclasses.field(default_factory=FrozenMap)
    secrets: tuple[Any, ...] = ()
    workdir: str | None = None
    timeout: int = DEFAULT_TIMEOUT
    idle_timeout: int | None = None
    cpu: float | None = None
    memory: int | None = None
    gpu: str | None = None
    block_network: bool = False
    cidr_allowlist: tuple[str, ...] | None = None
    mounts: FrozenMap = dataclasses.field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in (
            "daemons",
            "encrypted_ports",
            "unencrypted_ports",
            "h2_ports",
            "secrets",
            "cidr_allowlist",
        ):
            set_(self, name, _maybe_tuple(getattr(self, name)))
        set_(self, "env", _maybe_frozen(self.env))
        set_(self, "mounts", _maybe_frozen(_fspaths(self.mounts)))
        set_(self, "secrets", tuple(_maybe_frozen(s) for s in self.secrets))
        _Validator(self).run()

    # -- derived views -------------------------------------------------------------------

    @property
    def ports(self) -> tuple[int, ...]:
        """Every declared port, of all three kinds."""
        return self.encrypted_ports + self.unencrypted_ports + self.h2_ports

    def port_kind(self, port: int) -> str | None:
        for kind in ("encrypted_ports", "unencrypted_ports", "h2_ports"):
            if port in getattr(self, kind):
                return kind
        return None

    def secret_values(self) -> list[str]:
        """Values of dict secrets, for scrubbing output (``modal.Secret`` values are unknown)."""
        return [v for s in self.secrets if isinstance(s, Mapping) for v in s.values() if v]

    @property
    def spec_hash(self) -> str:
        """A short stable digest of the spec (secret values enter only as a digest)."""
        blob = json.dumps(_canonical(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def with_mounts_from(self, base: str | os.PathLike[str]) -> SandboxSpec:
        """This spec with each relative ``mounts`` source made absolute from ``base`` (pytest's
        rootdir; the working directory in ``start()``), every source checked to exist."""
        if not self.mounts:
            return self
        resolved = {}
        for target, source in self.mounts.items():
            path = os.path.normpath(os.path.join(base, os.path.expanduser(source)))
            if not os.path.exists(path):
                where = "" if os.path.isabs(source) else f" (relative paths are from {base})"
                raise SpecError(
                    f"mounts[{target!r}]: {source!r} does not exist on this machine{where}; "
                    "give an existing file or directory"
                )
            if not (os.path.isfile(path) or os.path.isdir(path)):
                raise SpecError(f"mounts[{target!r}]: {source!r} is not a file or directory")
            resolved[target] = path
        return self if resolved == dict(self.mounts) else self.replace(mounts=resolved)

    def replace(self, **fields: Any) -> SandboxSpec:
        """A copy with ``fields`` changed (validated like the constructor)."""
        return spec_from_fields({**self.as_fields(), **fields})

    def as_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def image_label(self) -> str:
        if self.image is None:
            return "(default image)"
        if isinstance(self.image, str):
            return self.image
        if isinstance(self.image, Snapshot):
            return self.image.label()
        return f"{type(self.image).__name__} object"

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default or (f.name == "env" and not value):
                continue
            if f.name == "secrets":
                parts.append(f"secrets=<{len(value)} hidden>")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"SandboxSpec({', '.join(parts)})"


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SandboxSpec))


def spec_from_fields(fields: Mapping[str, Any]) -> SandboxSpec:
    """Build a spec from marker-style keyword fields, refusing unknown ones with a hint."""
    unknown = [k for k in fields if k not in FIELDS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"unknown field {name!r}{hint}; known fields: {', '.join(FIELDS)}")
    return SandboxSpec(**fields)


# -- validation ---------------------------------------------------------------------------


def parse_cidrs(value: Any) -> tuple[str, ...] | None:
    """``value`` (None or a list of CIDR strings) with each network normalised
    (``"10.1.2.3/8"`` -> ``"10.0.0.0/8"``); a bad value raises ``ValueError`` saying which."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError('must be a list of CIDR strings, e.g. ["10.0.0.0/8"], or None')
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f'{item!r} is not a CIDR string such as "10.0.0.0/8"')
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(
                f'{item!r} is not a CIDR such as "10.0.0.0/8" or "1.2.3.4/32" ({exc})'
            ) from None
    return tuple(out)


class _Validator:
    """Checks a whole spec tree; the first problem raises ``SpecError`` with its field path."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    def fail(self, field: str, value: Any, problem: str) -> None:
        raise SpecError(f"{field}: {problem} (got {_show(value)})")

    def run(self) -> None:
        s = self.spec
        image = s.image
        if (
            image is not None
            and not isinstance(image, (str, Snapshot))
            and not _is_modal(image, "Image")
        ):
            self.fail(
                "image", image, "must be an image reference string, a modal.Image or a Snapshot"
            )
        if isinstance(image, str) and (not image.strip() or any(c.isspace() for c in image)):
            self.fail("image", image, "must be a non-empty image reference without spaces")
        self.check_ports()
        self.check_env("env", s.env)
        for i, secret in enumerate(s.secrets):
            if isinstance(secret, Mapping):
                self.check_env(f"secrets[{i}]", secret)
            elif not _is_modal(secret, "Secret"):
                self.fail(f"secrets[{i}]", secret, "must be a dict of str to str or a modal.Secret")
        self.check_workdir("workdir", s.workdir)
        self.check_mounts()
        self.check_timeout("timeout", s.timeout, required=True, limit=MAX_TIMEOUT)
        self.check_timeout("idle_timeout", s.idle_timeout, required=False, limit=MAX_TIMEOUT)
        if s.cpu is not None and (not _is_number(s.cpu) or s.cpu <= 0):
            self.fail("cpu", s.cpu, "must be a positive number of cores")
        if s.memory is not None and (not _is_int(s.memory) or s.memory <= 0):
            self.fail("memory", s.memory, "must be a positive number of MiB")
        if s.gpu is not None and (not isinstance(s.gpu, str) or not s.gpu):
            self.fail("gpu", s.gpu, "must be a GPU type string such as 'T4'")
        self.check_network()
        self.check_daemons()

    def check_network(self) -> None:
        s = self.spec
        if not isinstance(s.block_network, bool):
            self.fail("block_network", s.block_network, "must be True or False")
        try:
            parse_cidrs(s.cidr_allowlist)
        except ValueError as exc:
            self.fail("cidr_allowlist", s.cidr_allowlist, str(exc))
        if s.block_network and s.cidr_allowlist is not None:
            self.fail(
                "cidr_allowlist",
                s.cidr_allowlist,
                "cannot be used with block_network=True (as on Modal): drop one of them",
            )
        if s.block_network and s.ports:
            self.fail(
                "block_network",
                s.block_network,
                f"a sandbox without network cannot open ports (declared: {list(s.ports)}); "
                "as on Modal, drop the ports or block_network",
            )

    def check_ports(self) -> None:
        seen: dict[int, str] = {}
        for kind in ("encrypted_ports", "unencrypted_ports", "h2_ports"):
            for i, port in enumerate(getattr(self.spec, kind)):
                where = f"{kind}[{i}]"
                if not _is_int(port):
                    self.fail(where, port, "must be an int port number")
                if not 1 <= port <= 65535:
                    self.fail(where, port, "is outside 1..65535")
                if port in seen:
                    self.fail(where, port, f"is already declared in {seen[port]}")
                seen[port] = kind

    def check_env(self, field: str, env: Any) -> None:
        if not isinstance(env, Mapping):
            self.fail(field, env, "must be a dict of str to str")
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_KEY.match(key):
                self.fail(f"{field} key", key, "must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if not isinstance(value, str):
                self.fail(
                    f"{field}[{key!r}]", "<hidden>" if "secret" in field else value, "must be a str"
                )

    def check_workdir(self, field: str, workdir: Any) -> None:
        if workdir is None:
            return
        if not isinstance(workdir, str) or not workdir.startswith("/"):
            self.fail(field, workdir, "must be an absolute path")

    def check_mounts(self) -> None:
        mounts = self.spec.mounts
        if not isinstance(mounts, Mapping):
            self.fail("mounts", mounts, 'must be a dict {"/path/in/sandbox": "local/path"}')
        seen: set[str] = set()
        for target, source in mounts.items():
            where = f"mounts[{target!r}]"
            if not isinstance(target, str) or not target.startswith("/"):
                self.fail(
                    f"mounts key {target!r}", target, "must be an absolute path in the sandbox"
                )
            norm = posixpath.normpath(target).replace("//", "/")
            if norm == "/":
                self.fail(where, target, "cannot be mounted at / (mount a directory under it)")
            if norm in seen:
                self.fail(where, target, "is the same path in the sandbox as another mount")
            seen.add(norm)
            if not isinstance(source, str) or not source:
                self.fail(where, source, "must be a local file or directory path (str or Path)")

    def check_timeout(self, field: str, value: Any, *, required: bool, limit: float) -> None:
        if value is None and not required:
            return
        if not _is_number(value):
            self.fail(field, value, "must be a number of seconds")
        if value <= 0:
            self.fail(field, value, "must be positive")
        if value > limit:
            self.fail(field, value, f"must be at most {limit:g} seconds")

    def check_daemons(self) -> None:
        names: set[str] = set()
        for i, daemon in enumerate(self.spec.daemons):
            where = f"daemons[{i}]"
            if not isinstance(daemon, Daemon):
                self.fail(where, daemon, "must be a Daemon(...)")
            if not isinstance(daemon.name, str) or not _DAEMON_NAME.match(daemon.name):
                self.fail(
                    f"{where}.name",
                    daemon.name,
                    "must be 1-64 chars of letters, digits, '_', '.', '-'",
                )
            if daemon.name in names:
                self.fail(f"{where}.name", daemon.name, "is a duplicate daemon name")
            names.add(daemon.name)
            where = f"daemons[{i}] ({daemon.name})"
            command = daemon.command
            if daemon.entrypoint:
                args = daemon.args
                if args is not None and (
                    not isinstance(args, tuple) or not all(isinstance(a, str) for a in args)
                ):
                    self.fail(
                        f"{where}.args",
                        args,
                        "must be a list of str (argv words, as after 'docker run IMAGE'); "
                        "shlex.split() splits a command line",
                    )
            elif isinstance(command, str):
                if not command.strip():
                    self.fail(f"{where}.command", command, "must not be empty")
            elif (
                not isinstance(command, tuple)
                or not command
                or not all(isinstance(a, str) for a in command)
                or not command[0]
            ):
                self.fail(
                    f"{where}.command", command, "must be a non-empty shell string or list of str"
                )
            self.check_env(f"{where}.env", daemon.env)
            self.check_workdir(f"{where}.workdir", daemon.workdir)
            if not isinstance(daemon.restart, bool):
                self.fail(f"{where}.restart", daemon.restart, "must be True or False")
            if daemon.ready is not None:
                self.check_probe(f"{where}.ready", daemon.ready)

    def check_probe(self, where: str, probe: Any) -> None:
        if not isinstance(probe, Probe):
            self.fail(where, probe, "must be a Probe (Probe.tcp/http/log/exec)")
        self.check_timeout(f"{where}.timeout", probe.timeout, required=True, limit=MAX_TIMEOUT)
        if probe.kind in ("tcp", "http"):
            port = probe.port
            if not _is_int(port) or not 1 <= port <= 65535:
                self.fail(f"{where}.port", port, "must be an int port in 1..65535")
        if probe.kind == "http":
            if port not in self.spec.ports:
                self.fail(
                    f"{where}.port",
                    port,
                    "is not declared; an http probe goes through the port's tunnel, "
                    "so list it in encrypted_ports, unencrypted_ports or h2_ports",
                )
            if not isinstance(probe.path, str) or not probe.path.startswith("/"):
                self.fail(f"{where}.path", probe.path, "must start with '/'")
            if not _is_int(probe.status) or not 100 <= probe.status <= 599:
                self.fail(f"{where}.status", probe.status, "must be an HTTP status code")
        elif probe.kind == "log":
            if not isinstance(probe.pattern, str) or not probe.pattern:
                self.fail(f"{where}.pattern", probe.pattern, "must be a non-empty regex")
            try:
                re.compile(probe.pattern)
            except re.error as exc:
                self.fail(f"{where}.pattern", probe.pattern, f"is not a valid regex: {exc}")
        elif probe.kind == "exec":
            if not probe.argv or not all(isinstance(a, str) and a for a in probe.argv):
                self.fail(f"{where}.argv", list(probe.argv), "must be a non-empty list of str")
        elif probe.kind != "tcp":
            self.fail(f"{where}.kind", probe.kind, "must be one of tcp, http, log, exec")


# -- helpers ------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_modal(obj: Any, cls_name: str) -> bool:
    """Recognise ``modal.Image``/``modal.Secret`` without importing modal."""
    return any(
        c.__name__ == cls_name and c.__module__.split(".")[0] == "modal" for c in type(obj).__mro__
    )


def _maybe_tuple(value: Any) -> Any:
    """Lists become tuples; anything else is left for the validator to judge."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _fspaths(value: Any) -> Any:
    """``Path`` values of a mapping as strings (the mounts' sources)."""
    if isinstance(value, Mapping) and not isinstance(value, FrozenMap):
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in value.items()}
    return value


def _maybe_frozen(value: Any) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, FrozenMap):
        try:
            return FrozenMap(value)
        except TypeError:
            return value
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _canonical(value: Any) -> Any:
    """A JSON-able form of a spec for hashing; secret values become digests."""
    if isinstance(value, SandboxSpec):
        out = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["secrets"] = [
            {k: hashlib.sha256(v.encode()).hexdigest() for k, v in s.items()}
            if isinstance(s, Mapping)
            else f"modal.Secret@{id(s)}"
            for s in value.secrets
        ]
        return out
    if isinstance(value, Snapshot):
        return f"snapshot:{value.backend}:{value.id}"
    if isinstance(value, (Daemon, Probe)):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"{type(value).__module__}.{type(value).__qualname__}@{id(value)}"
