"""``LocalSandbox``: a handle on one sandbox's record, usable from any local process.

A handle holds no resources: every call reads the sandbox's state dir, so handles from
``get``/``list`` in another process (an xdist worker, the reap CLI, the emulator) behave like
the creator's, except for what only the creator holds (the stdin pipe).
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from .. import errors
from . import activity, owners, procs
from .check import Tools
from .config import ExecOutcome, ExitStatus
from .errors import InvalidArgument, SandboxNotFound
from .execs import run_to_completion
from .mounts import merged_env, resolve_in_root
from .ports import listening_ports
from .spawner import spawn
from .store import SandboxPaths, read_json, remove_tree, write_json

__all__ = ["LocalSandbox"]

_File = int | IO[Any] | None
_NAMESPACES = ("user", "mnt", "net", "uts", "ipc", "pid", "cgroup")
ENTER = str(Path(__file__).with_name("enter.py"))
ENDING_SETTLE = 1.0  # how long an exec that could not enter waits for the sandbox's end


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not argv:
        raise InvalidArgument(f"argv={argv!r}: must be a non-empty sequence of str")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidArgument(f"argv={argv!r}: {arg!r} is not a str without NUL characters")
    if not argv[0]:
        raise InvalidArgument(f"argv={argv!r}: the program name is empty")
    return list(argv)


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgument(f"env={env!r}: must be a mapping of str to str")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env: {key!r} is not a valid variable name")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgument(f"env[{key!r}]={value!r}: must be a str without NUL")
    return dict(env)


class LocalSandbox:
    """One local sandbox (running or finished).  Get one from :class:`LocalRuntime`."""

    def __init__(self, root: Path, meta: Mapping[str, Any], tools: Tools) -> None:
        self.id: str = meta["id"]
        self.app: str = meta["app"]
        self.name: str | None = meta.get("name")
        self.created_at: float = meta["created_at"]
        self.hostname: str = meta["hostname"]
        self.ports: tuple[int, ...] = tuple(meta.get("ports", ()))
        self._meta = dict(meta)
        self._counts_activity = meta.get("idle_timeout") is not None
        self._tools = tools
        self._paths = SandboxPaths(root, self.id)
        self.stdout_path: Path = self._paths.stdout
        self.stderr_path: Path = self._paths.stderr
        self._keeper = procs.ProcRef.from_json(meta["keeper"])
        self._init = procs.ProcRef.from_json(meta["init"]) if meta.get("init") else None
        self._status: ExitStatus | None = None
        self._keeper_gone = False

    def __repr__(self) -> str:
        return f"<LocalSandbox {self.id} app={self.app!r} name={self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalSandbox) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def state_dir(self) -> Path:
        """This sandbox's directory in the state dir."""
        return self._paths.dir

    @property
    def env(self) -> dict[str, str]:
        """The sandbox's environment (defaults plus the config's ``env``)."""
        return dict(self._meta["env"])

    @property
    def workdir(self) -> str:
        return str(self._meta["workdir"])

    # --- seen from the host ---------------------------------------------------------------

    @property
    def init_pid(self) -> int | None:
        """The host pid of the sandbox's PID 1 while it runs, else None.

        From the host, ``/proc/<pid>/ns/*`` are the sandbox's namespaces and
        ``/proc/<pid>/net/tcp`` its sockets; prefer :meth:`listening_ports`,
        :meth:`open_namespaces` and :meth:`helper_command`, which guard against pid reuse.
        """
        if self._init is None or self.poll() is not None or not procs.is_alive(self._init):
            return None
        return self._init.pid

    def listening_ports(self) -> set[int]:
        """TCP ports in LISTEN state inside the sandbox (IPv4 and IPv6).

        Read from the host (``/proc/<PID 1>/net/tcp{,6}``, the tables of its network
        namespace), so it works in any image: no ``cat``, no shell, nothing inside is run.
        """
        init = self._require_running("read its sockets")
        text = ""
        for name in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{init.pid}/net/{name}", encoding="ascii", errors="replace") as f:
                    text += f.read()
            except FileNotFoundError:  # no IPv6 in this kernel
                continue
            except ProcessLookupError:
                break
        self._require_running("read its sockets")  # the pid still names our PID 1
        return listening_ports(text)

    def open_namespaces(self, kinds: Sequence[str] = ("mnt",)) -> dict[str, int]:
        """File descriptors of the running sandbox's namespaces (``"mnt"``, ``"net"``, ...), for
        a host process that ``setns(2)``es into them; the caller closes them.

        ``"user"`` is added when this process is not root: it needs the sandbox's user
        namespace to join the others.  Root joins them without it and stays in its own (host
        code never runs in the sandbox's user namespace, where the sandbox's root could reach
        it).  Opened from PID 1 and checked afterwards to still be that process.
        """
        wanted = list(dict.fromkeys(kinds))
        bad = [k for k in wanted if k not in _NAMESPACES]
        if bad:
            raise InvalidArgument(f"kinds={list(kinds)!r}: unknown namespace {bad[0]!r}")
        if os.geteuid() != 0 and "user" not in wanted:
            wanted.insert(0, "user")
        init = self._require_running("enter its namespaces")
        fds: dict[str, int] = {}
        try:
            for kind in wanted:
                fds[kind] = os.open(f"/proc/{init.pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            self._require_running("enter its namespaces")
        except BaseException as exc:
            for fd in fds.values():
                os.close(fd)
            if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
                raise SandboxNotFound(f"sandbox {self.id} ended; cannot enter it") from None
            raise
        return fds

    def helper_command(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        namespaces: Sequence[str] = ("mnt",),
    ) -> tuple[list[str], dict[str, int]]:
        """Run a stdlib-only Python ``script`` *inside* the sandbox with the host's interpreter.

        Returns the host argv and the namespace fds it needs: spawn it with
        ``pass_fds=fds.values()`` (and ``start_new_session=True``), then close the fds.  The
        script's imports run on the host, then it enters ``namespaces`` and its ``main(args)``
        runs there (see ``runtime/enter.py``): the file system of an image with no Python, no
        shell and no ``cat`` is reachable this way, with the sandbox's mounts and root.
        """
        fds = self.open_namespaces(namespaces)
        argv = [sys.executable or "python3", "-I", "-S", ENTER]
        argv += [f"{kind}={fd}" for kind, fd in fds.items()]
        argv += ["--", os.fspath(script), *args]
        return argv, fds

    # --- tags -----------------------------------------------------------------------------

    def tags(self) -> dict[str, str]:
        """Its tags: those given at creation (in the record) until :meth:`set_tags`."""
        data = read_json(self._paths.tags)
        if data is None:
            data = self._meta.get("tags")
        return dict(data) if isinstance(data, dict) else {}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace all tags (atomically: a concurrent reader sees the old or the new set)."""
        if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise InvalidArgument(f"tags={tags!r}: must be a mapping of str to str")
        if not self._paths.dir.is_dir():
            raise SandboxNotFound(f"sandbox {self.id} no longer exists (its record was removed)")
        write_json(self._paths.tags, dict(tags))

    # --- life -----------------------------------------------------------------------------

    def poll(self) -> ExitStatus | None:
        """The exit status, or None while the sandbox runs."""
        if self._status is not None:
            return self._status
        status = self._read_result()
        if status is None and procs.is_alive(self._keeper):
            return None
        if status is None:
            status = self._read_result() or self._finalise_lost()
        self._status = status
        owners.forget(self.id)
        return status

    def _read_result(self) -> ExitStatus | None:
        data = read_json(self._paths.result)
        if not isinstance(data, dict):
            return None
        try:
            return ExitStatus.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None

    def _finalise_lost(self) -> ExitStatus:
        """The keeper died without recording an end (SIGKILL, reboot): record it as terminated.

        bwrap and the sandbox die with it (parent-death signal); make sure of that, then remove
        the writable dirs the keeper could not.
        """
        if self._init is not None and procs.send_signal(self._init, signal.SIGKILL):
            procs.wait_gone(self._init, 5.0)  # normally already dying of the parent-death signal
        status = ExitStatus("terminated", None, time.time())
        if self._paths.dir.is_dir():
            if not self._paths.result.exists():
                write_json(
                    self._paths.result,
                    {"kind": status.kind, "exitcode": None, "finished_at": status.finished_at},
                )
            for path in self._paths.writable():
                remove_tree(path)
        return self._read_result() or status

    def wait(self, timeout: float | None = None) -> ExitStatus | None:
        """Wait until the sandbox has ended *and* its keeper has finished cleaning up (its
        processes are gone, its writable dirs removed); None on timeout.

        :meth:`poll` answers as soon as the exit status is recorded, which the keeper does
        before it cleans up; ``wait`` is what to call before relying on nothing being left.
        """
        if not self._keeper_gone:
            if not procs.wait_gone(self._keeper, timeout):
                return None
            self._keeper_gone = True
            owners.reap()
        return self.poll()

    def terminate(self, *, wait: bool = False) -> None:
        """End the sandbox (status ``terminated``).  Idempotent; works from any process."""
        if self.poll() is None and not procs.send_signal(self._keeper, signal.SIGTERM):
            self.poll()  # the keeper vanished meanwhile: record that
        if wait:
            self.wait()

    def detach_owner(self) -> None:
        """Let the sandbox outlive its owner (e.g. to keep it for debugging); timeouts apply."""
        try:
            self._paths.detached.touch()
        except FileNotFoundError:
            raise SandboxNotFound(f"sandbox {self.id} no longer exists") from None
        owners.close_owner(self.id)

    def _require_running(self, doing: str) -> procs.ProcRef:
        status = self.poll()
        if status is not None:
            raise SandboxNotFound(
                f"sandbox {self.id} has finished ({status.describe()}); cannot {doing}"
            )
        if self._init is None or not procs.is_alive(self._init):
            raise SandboxNotFound(f"sandbox {self.id} is shutting down; cannot {doing}")
        return self._init

    # --- snapshots ------------------------------------------------------------------------

    @property
    def layers(self) -> tuple[tuple[str, str], ...]:
        """The snapshot layers this sandbox was started from (``SandboxConfig.layers``)."""
        return tuple((str(t), str(d)) for t, d in self._meta.get("layers", ()))

    def snapshot(self, dest: Path) -> tuple[tuple[str, str], ...]:
        """Copy what the sandbox wrote into ``dest``; returns the ``SandboxConfig.layers`` of
        a clone (``runtime/snapshot.py``)."""
        from .snapshot import capture

        init = self._require_running("snapshot it")
        return capture(
            self._meta,
            keeper_pid=self._keeper.pid,
            init_pid=init.pid,
            state_dir=self._paths.dir,
            dest=dest,
            still_running=lambda: self._require_running("snapshot it"),
        )

    # --- activity -------------------------------------------------------------------------

    def activity(self) -> AbstractContextManager[None]:
        """Held = active, for ``idle_timeout`` (any process may hold it); nothing to hold for
        a sandbox without one (a token is a few file operations per exec)."""
        if not self._counts_activity:
            return contextlib.nullcontext()
        return activity.hold(self._paths.activity, self._paths.last_activity)

    def touch(self) -> None:
        """A moment of activity: restarts the idle clock."""
        activity.touch(self._paths.last_activity)

    # --- exec -----------------------------------------------------------------------------

    def exec_command(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The host argv and environment that run ``argv`` inside the sandbox.

        ``nsenter`` joins every namespace of PID 1, the user namespace last: the exec runs as
        root of the sandbox with the capabilities PID 1's tree has there, and no more.  Spawn
        it with :func:`~pytest_modal_sandbox.runtime.spawn_exec` (which adds the walls a thread
        passes on: no_new_privs, the seccomp filter, a fresh keyring) and
        ``start_new_session=True``, and hold :meth:`activity` while it runs.  To stop it early
        use :func:`~pytest_modal_sandbox.runtime.kill_exec` (its pid), not a plain ``killpg``.
        Killed by signal N shows as exit -N from Popen (128+N from :meth:`exec`); a missing
        program exits 127.
        """
        argv = _check_argv(argv)
        overrides = _check_env(env)
        wd = self.workdir if workdir is None else workdir
        if not isinstance(wd, str) or not wd.startswith("/") or "\0" in wd:
            raise InvalidArgument(f"workdir={wd!r}: must be an absolute path")
        init = self._require_running("exec")
        root = f"/proc/{init.pid}/root"
        try:
            host_wd = resolve_in_root(root, wd)
            is_dir = os.path.isdir(host_wd)
        except OSError as exc:
            if not os.path.isdir(root):
                self._ended_under(argv)
            raise InvalidArgument(f"workdir={wd!r} cannot be resolved in {self.id}: {exc}") from exc
        if not is_dir:
            if not os.path.isdir(root):  # PID 1 is exiting (its root is gone): the sandbox ends
                self._ended_under(argv)
            self._require_running("exec")
            raise InvalidArgument(f"workdir={wd!r} is not a directory in sandbox {self.id}")
        flags = ["-U", "-m", "-u", "-i", "-n", "-p", "-C"]
        if self._meta.get("userns") != "pair":
            # Not as root: our uid is root in there already, and bwrap denied setgroups there,
            # which nsenter would call.  (As root nsenter drops our groups and becomes uid 0.)
            flags.insert(1, "--preserve-credentials")
        command = [self._tools.nsenter, "-t", str(init.pid), *flags, f"--wd={host_wd}", "--"]
        return command + argv, merged_env(self._meta["env"], overrides)

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecOutcome:
        """Run ``argv`` in the sandbox to completion.

        Exit code 127 for a missing program, 128+N when killed by signal N.  On ``timeout``
        the process group is killed and ``returncode`` is -1 with ``timed_out`` set.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise InvalidArgument(f"timeout={timeout!r}: must be a positive number of seconds")
        if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"stdin must be bytes, not {type(stdin).__name__}")
        command, full_env = self.exec_command(argv, env=env, workdir=workdir)
        with self.activity():
            outcome = run_to_completion(
                command, full_env, stdin=None if stdin is None else bytes(stdin), timeout=timeout
            )
        if outcome.returncode == 1 and _entry_failed(outcome.stderr):
            self._ended_under(argv)  # nsenter could not enter: the sandbox may be going
        return outcome

    def _ended_under(self, argv: Sequence[str]) -> None:
        """Raise :class:`SandboxNotFound` if the sandbox ends within a moment (its PID 1 or
        its keeper gone): the command could not start because the sandbox was ending."""
        deadline = time.monotonic() + ENDING_SETTLE
        while time.monotonic() < deadline:
            status = self.poll()
            if status is not None or self._init is None or not procs.is_alive(self._init):
                what = status.describe() if status is not None else "shutting down"
                raise SandboxNotFound(
                    f"sandbox {self.id} ended as {' '.join(argv)!r} was starting ({what})"
                )
            time.sleep(0.01)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: _File = subprocess.PIPE,
        stdout: _File = subprocess.PIPE,
        stderr: _File = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the sandbox; the sandbox counts as active until the process exits.

        The process leads its own process group; stop it early with
        :func:`~pytest_modal_sandbox.runtime.kill_exec` ``(proc.pid)``.
        """
        command, full_env = self.exec_command(argv, env=env, workdir=workdir)
        token = None
        if self._counts_activity:
            token = activity.ActivityToken(self._paths.activity, self._paths.last_activity)
        try:
            proc = spawn(
                command,
                env=full_env,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        except BaseException:
            if token is not None:
                token.release()
            raise
        if token is not None:
            _release_on_exit(proc, token)
        return proc

    # --- stdin ----------------------------------------------------------------------------

    def write_stdin(self, data: bytes, *, eof: bool = False) -> None:
        """Write the entrypoint's stdin (creator only, ``stdin_pipe=True``); counts as activity."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"data must be bytes, not {type(data).__name__}")
        if not self._meta.get("stdin_pipe"):
            raise errors.SandboxError(
                f"sandbox {self.id} was created without stdin_pipe=True; its stdin is /dev/null"
            )
        self._require_running("write to stdin")
        owned = owners.get(self.id)
        if owned is None:
            raise errors.SandboxError(
                f"only the process that created sandbox {self.id} can write its stdin"
            )
        with owned.stdin_lock, self.activity():
            if owned.stdin_w is None:
                raise errors.SandboxError(f"stdin of sandbox {self.id} was already closed (eof)")
            view = memoryview(bytes(data))
            try:
                while view:
                    view = view[os.write(owned.stdin_w, view) :]
            except BrokenPipeError:
                self._require_running("write to stdin")
                raise errors.SandboxError(
                    f"the entrypoint of sandbox {self.id} has closed its stdin"
                ) from None
            if eof:
                os.close(owned.stdin_w)
                owned.stdin_w = None

    # --- tunnels --------------------------------------------------------------------------

    def tunnel(
        self, port: int, *, tls: ssl.SSLContext | None = None, declared: bool = True
    ) -> tuple[str, int]:
        """A 127.0.0.1 endpoint in this process forwarding to ``port`` inside the sandbox.

        Made once per port per process (later calls return the same address); it closes when
        the sandbox ends or on ``LocalRuntime.close()``.  With ``tls``, connections that start
        with a TLS handshake are decrypted here and others pass as plain bytes.
        ``declared=False`` also opens one to a port the sandbox did not declare (the upstream
        of a connect token, whose proxy checks the token in front of it).
        """
        from . import tunnels

        if (
            isinstance(port, bool)
            or not isinstance(port, int)
            or not 1 <= port <= 65535
            or (declared and port not in self.ports)
        ):
            raise errors.NotDeclaredError(
                f"port {port!r} of sandbox {self.id} was not declared; "
                f"declared ports: {list(self.ports) or 'none'}"
            )
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise InvalidArgument(f"tls must be an ssl.SSLContext, not {type(tls).__name__}")
        init = self._require_running("open a tunnel")
        return tunnels.open_tunnel(self, init, port, tls)

    def peer(self, port: int) -> tuple[str, int]:
        """Where another sandbox connects to ``port``: this process's tunnel for it, at this
        machine's own non-loopback address (``hostaddr.py``); valid while the tunnel is."""
        from .hostaddr import peer_host

        host = peer_host()  # first: a machine without one gets that error, not a tunnel
        return host, self.tunnel(port)[1]


def _release_on_exit(proc: subprocess.Popen[bytes], token: activity.ActivityToken) -> None:
    """Release ``token`` once ``proc`` exits, without reaping it (the caller still waits)."""
    pidfd = os.pidfd_open(proc.pid)

    def watch() -> None:
        try:
            import select

            select.select([pidfd], [], [])
        finally:
            os.close(pidfd)
            token.release()

    threading.Thread(target=watch, name=f"pms-activity-{proc.pid}", daemon=True).start()


def _entry_failed(stderr: bytes) -> bool:
    """Whether nsenter itself failed before the command ran (not "failed to execute", which is
    the command missing: exit 127 or 126)."""
    first = stderr.split(b"\n", 1)[0]
    return first.startswith(b"nsenter: ") and b"failed to execute" not in first
