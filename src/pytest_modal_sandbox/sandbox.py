"""The backend-neutral sandbox handle a test receives.

Everything here is built on the backend's ``exec`` and ``endpoint``, so it behaves the same on
every backend.  Files and logs go through ``sh``/``cat`` inside the sandbox: any Linux image with
a POSIX shell works, no Python needed.

A sandbox that ended under the test (terminated from outside, its timeout, its idle timeout,
out of memory) is one :class:`~pytest_modal_sandbox.errors.SandboxGone` naming how it ended,
from every method, on every backend: the backend says *that* it is gone (or a command came back
killed), the backend's ``finished()`` says *how*, and the words are written here, once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from .errors import ExecError, NotDeclaredError, SandboxError, SandboxGone
from .spec import SandboxSpec

if TYPE_CHECKING:
    from typing import Literal

    from .authproxy import ConnectToken
    from .backends.protocol import BackendSandbox, Ending, Endpoint
    from .snapshot import Snapshot

__all__ = ["DAEMON_DIR", "ExecResult", "Sandbox"]

DAEMON_DIR = "/tmp/.sandbox-daemons"
"""Where daemons keep their log, pid and exit files inside the sandbox."""

TAIL_CHARS = 2000
ALIVE_FOR = 1.0
"""Seconds a sign of life (a command that ran, a check) counts for: ``url()`` and ``tcp()``
ask the backend whether the sandbox still runs only when the last sign is older."""
SETTLE = 1.0
"""Seconds a sandbox known to be gone is given for its backend to record how it ended."""


@dataclass(frozen=True)
class ExecResult:
    """What a command run with :meth:`Sandbox.exec` did.  ``stdout``/``stderr`` are ``str``
    (UTF-8, undecodable bytes replaced) unless ``text=False`` was asked for."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str | bytes
    stderr: str | bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> ExecResult:
        """Self if the command exited 0, else raise :class:`ExecError` with the output tail."""
        if self.returncode != 0:
            raise ExecError(self.argv, self.returncode, _text(self.stdout), _text(self.stderr))
        return self


@dataclass
class Timings:
    """Seconds since the epoch at each phase, for reports and the summary."""

    requested: float = field(default_factory=time.time)
    created: float | None = None
    ready: float | None = None
    finished: float | None = None

    @property
    def create_seconds(self) -> float | None:
        return None if self.created is None else self.created - self.requested

    @property
    def ready_seconds(self) -> float | None:
        if self.ready is None or self.created is None:
            return None
        return self.ready - self.created


class Sandbox:
    """A running sandbox: run commands in it, reach its ports, read its daemons' logs."""

    def __init__(self, impl: BackendSandbox, spec: SandboxSpec, backend: str) -> None:
        self._impl = impl
        self.spec = spec
        self.backend = backend
        self.timings = Timings()
        self._endpoints: dict[int, Endpoint] = {}
        self._terminated = False
        self._alive_at = time.monotonic()  # a handle is made for a running sandbox
        self._ended: Ending | None = None  # once known: an ended sandbox stays ended

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} on {self.backend} image={self.spec.image_label()}>"

    @property
    def id(self) -> str:
        return self._impl.id

    # -- commands --------------------------------------------------------------------------

    @overload
    def exec(
        self,
        *argv: str,
        env: Mapping[str, str] | None = ...,
        workdir: str | None = ...,
        timeout: float | None = ...,
        stdin: str | bytes | None = ...,
        text: Literal[True] = ...,
    ) -> ExecResult: ...

    @overload
    def exec(
        self,
        *argv: str,
        env: Mapping[str, str] | None = ...,
        workdir: str | None = ...,
        timeout: float | None = ...,
        stdin: str | bytes | None = ...,
        text: Literal[False],
    ) -> ExecResult: ...

    def exec(
        self,
        *argv: str,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        text: bool = True,
    ) -> ExecResult:
        """Run ``argv`` in the sandbox and wait for it.

        A missing program gives returncode 127, a signal N gives 128+N.  Past ``timeout``
        seconds the command is killed and :class:`~pytest_modal_sandbox.errors.ExecTimeout`
        is raised.
        """
        _check_argv(argv)
        if workdir is not None and not workdir.startswith("/"):
            raise SandboxError(f"exec workdir must be an absolute path, got {workdir!r}")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        doing = f"run {_command(argv)}"
        try:
            raw = self._impl.exec(argv, env=env, workdir=workdir, stdin=data, timeout=timeout)
        except SandboxGone as exc:
            raise self._gone(doing, exc) from exc
        if raw.returncode == 137 and not self._survived_a_kill():
            raise self._gone(doing)  # SIGKILLed, as everything in an ending sandbox is
        self._alive_at = time.monotonic()
        if text:
            return ExecResult(argv, raw.returncode, _text(raw.stdout), _text(raw.stderr))
        return ExecResult(argv, raw.returncode, raw.stdout, raw.stderr)

    def sh(self, script: str, **kwargs: object) -> ExecResult:
        """``exec("sh", "-c", script)``: a shortcut for shell one-liners."""
        return self.exec("sh", "-c", script, **kwargs)  # type: ignore[call-overload, no-any-return]

    # -- ports -----------------------------------------------------------------------------

    def endpoint(self, port: int) -> Endpoint:
        if port not in self.spec.ports:
            declared = ", ".join(str(p) for p in self.spec.ports) or "none"
            raise NotDeclaredError(
                f"port {port} is not declared for sandbox {self.id} (declared: {declared}); "
                "add it to encrypted_ports, unencrypted_ports or h2_ports"
            )
        doing = f"reach port {port}"
        if self._ended is not None or time.monotonic() - self._alive_at > ALIVE_FOR:
            ending = self._ending()
            if ending is not None:
                raise self._gone(doing, ending=ending)
            self._alive_at = time.monotonic()
        if port not in self._endpoints:
            try:
                endpoint = self._impl.endpoint(port, self.spec.port_kind(port) or "")
            except SandboxGone as exc:
                raise self._gone(doing, exc) from exc
            self._endpoints[port] = endpoint
        return self._endpoints[port]

    def url(self, port: int) -> str:
        """The URL that reaches ``port`` with an HTTP client's default settings."""
        return self.endpoint(port).url

    def tcp(self, port: int) -> tuple[str, int]:
        """``(host, port)`` for a raw TCP client of ``port``."""
        ep = self.endpoint(port)
        return ep.host, ep.host_port

    def peer(self, port: int) -> tuple[str, int]:
        """``(host, port)`` where *another sandbox* of this run connects to ``port`` (declared
        ones only): on Modal the tunnel's public address, locally this machine's own address
        (never 127.0.0.1, which is each sandbox's own loopback).  E.g. an app sandbox's
        ``env={"DB_HOST": host, "DB_PORT": str(port)}``."""
        self.endpoint(port)  # declared? (the error names the fix)
        ep = self._impl.peer(port, self.spec.port_kind(port) or "")
        return ep.host, ep.host_port

    def peer_url(self, port: int) -> str:
        """The URL another sandbox of this run uses for ``port`` (see :meth:`peer`)."""
        self.endpoint(port)
        return self._impl.peer(port, self.spec.port_kind(port) or "").url

    def connect_token(self, port: int = 8080) -> ConnectToken:
        """A URL and a token: requests to the URL with ``Authorization: Bearer <token>``
        reach the server on ``port`` in the sandbox (declared or not), others get 401, as
        Modal's ``Sandbox.create_connect_token``.  ``token.headers()`` is that header."""
        from .backends.protocol import ConnectTokens

        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SandboxError(f"connect_token: port must be an int in 1..65535, not {port!r}")
        if not isinstance(self._impl, ConnectTokens):
            raise SandboxError(f"the {self.backend} backend has no connect tokens")
        return self._impl.connect_token(port)

    @property
    def tunnels(self) -> dict[int, Endpoint]:
        """Every declared port's endpoint, keyed by the port inside the sandbox."""
        return {port: self.endpoint(port) for port in self.spec.ports}

    # -- files and logs --------------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` inside the sandbox (``FileNotFoundError`` if missing)."""
        _check_path(path)
        res = self.exec("cat", "--", path, text=False)
        if res.returncode != 0:
            err = _text(res.stderr).strip()
            if "No such file" in err or "can't open" in err:
                raise FileNotFoundError(f"{path} (in sandbox {self.id})")
            raise SandboxError(f"cannot read {path} in sandbox {self.id}: {err}")
        return res.stdout  # type: ignore[return-value]

    def write_file(self, path: str, data: bytes | str) -> None:
        """Write ``data`` to ``path`` inside the sandbox, creating parent directories."""
        _check_path(path)
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        self.exec("sh", "-c", script, "sh", path, stdin=data).check()

    def logs(self, daemon: str) -> str:
        """Everything daemon ``daemon`` wrote to stdout and stderr so far."""
        names = [d.name for d in self.spec.daemons]
        if daemon not in names:
            listed = ", ".join(names) or "none"
            raise NotDeclaredError(
                f"no daemon named {daemon!r} in sandbox {self.id} (daemons: {listed})"
            )
        return _text(self.read_file(f"{DAEMON_DIR}/{daemon}/log"))

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, *, memory: bool = False, keep: bool = False) -> Snapshot:
        """A snapshot of everything the sandbox wrote (its whole root, ``/tmp`` included),
        usable as ``image=`` to start fresh clones of it on the same backend.

        Taken while the sandbox runs: let daemons flush their files first.  The snapshot is
        removed with the run unless ``keep`` (docs/how-to/snapshots.md).  ``memory=True``
        (running processes too) is refused where the backend cannot do it faithfully.
        """
        from .backends.protocol import Snapshots
        from .snapshot import Snapshot

        if not isinstance(self._impl, Snapshots):
            raise SandboxError(f"the {self.backend} backend cannot snapshot sandboxes")
        base = self.spec.image.image if isinstance(self.spec.image, Snapshot) else self.spec.image
        return self._impl.snapshot(
            memory=memory, keep=keep, base=base if isinstance(base, str) else None
        )

    # -- lifetime --------------------------------------------------------------------------

    def finished(self) -> str | None:
        """``None`` while the sandbox runs, else how it ended (``terminated``, ``timed out``,
        ``idle timeout``, ``out of memory (exit code 137)``, ...)."""
        if self._ended is None:
            self._ended = self._impl.finished()
        return None if self._ended is None else str(self._ended)

    def _survived_a_kill(self) -> bool:
        """After a command was SIGKILLed: whether the sandbox still runs (the command was
        killed, not the sandbox).  The backend may not have recorded the end yet, so a live
        sandbox is told by a command that runs: ``true``."""
        if self._ending() is not None:
            return False
        try:
            return self._impl.exec(["true"], timeout=30).returncode == 0
        except SandboxError:
            return False

    def _ending(self) -> Ending | None:
        """How the sandbox ended; None while it runs, or when the backend cannot tell now."""
        if self._ended is None:
            try:
                self._ended = self._impl.finished()
            except SandboxError:
                return None
        return self._ended

    def _gone(
        self, doing: str, cause: SandboxGone | None = None, *, ending: Ending | None = None
    ) -> SandboxGone:
        """One clear error: which sandbox, how it ended, what could not be done."""
        deadline = time.monotonic() + SETTLE
        ending = ending or self._ending()
        while ending is None and time.monotonic() < deadline:
            time.sleep(0.1)  # gone, but the backend may not have recorded how just yet
            ending = self._ending()
        if ending is None:  # the backend says it is gone but cannot say how
            why = f": {cause}" if cause is not None else ""
            return SandboxGone(
                f"sandbox {self.id} is gone; cannot {doing}{why}", sandbox_id=self.id
            )
        return SandboxGone(
            f"sandbox {self.id} is gone: it {self._ended_how(ending)}; cannot {doing}",
            sandbox_id=self.id,
            how=ending.how,
        )

    def _ended_how(self, ending: Ending) -> str:
        """``was terminated from outside ...``: how it ended, and what to do about it."""
        code = "" if ending.exit_code is None else f" (exit code {ending.exit_code})"
        if ending.how == "terminated":
            if self._terminated:
                return "was terminated by this handle's terminate()"
            return (
                "was terminated from outside the test (by another process or client: a "
                "script, the Modal dashboard, `modal sandbox stop`, a reap)"
            )
        if ending.how == "timeout":
            return (
                f"reached its timeout of {self.spec.timeout} s (a longer test needs a larger "
                "`timeout=` in its spec)"
            )
        if ending.how == "idle_timeout":
            idle = f" of {self.spec.idle_timeout} s" if self.spec.idle_timeout else ""
            return f"was ended by its idle timeout{idle} (nothing ran in it for that long)"
        if ending.how == "oom":
            return (
                f"ran out of memory: the kernel killed it{code} (give it more `memory=` in "
                "its spec)"
            )
        if ending.how == "exited":
            return f"ended: its main process exited{code}"
        return f"ended ({ending.detail or 'the backend cannot say how'})"

    def terminate(self, *, wait: bool = False) -> None:
        """End the sandbox and everything in it (idempotent)."""
        if not self._terminated:
            self._terminated = True
            self.timings.finished = time.time()
        self._impl.terminate(wait=wait)

    @property
    def terminated(self) -> bool:
        return self._terminated

    def release(self) -> None:
        """Let go of the sandbox without ending it: this process's own resources for it
        (heartbeats, tunnel listeners) are dropped; whoever owns it ends it later."""
        self._impl.release()

    def keep(self, seconds: float, *, tags: Mapping[str, str] | None = None) -> None:
        """Stop tying the sandbox to this process: it lives on for ``seconds`` (at most until
        its own ``timeout``), even after this process ends.  ``tags`` are added first, so a
        later sweep can tell it was kept on purpose."""
        if tags:
            self._impl.add_tags(tags)
        self._impl.keep(seconds)

    def shell_command(self) -> str | None:
        """A command line that opens a shell in the sandbox from this machine, if there is
        one (``modal shell <id>`` on Modal; an ``nsenter`` line on the local backend)."""
        return self._impl.shell_command()


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def _command(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _check_argv(argv: Sequence[str]) -> None:
    if not argv:
        raise SandboxError("exec needs a command, e.g. sandbox.exec('echo', 'hi')")
    bad = [a for a in argv if not isinstance(a, str)]
    if bad:
        raise SandboxError(f"exec arguments must be str, got {bad[0]!r} in {list(argv)!r}")


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise SandboxError(f"sandbox paths must be absolute, got {path!r}")
