"""Daemons and readiness, written once on top of ``exec`` so every backend behaves the same.

A daemon is launched by one short exec that starts a supervisor shell in the background
(``setsid`` when the image has it) with stdout/stderr appended to a log file, and its pid and
exit code in files next to it (``/tmp/.sandbox-daemons/<name>/``).  A long-lived exec would count
as activity forever on Modal (``idle_timeout`` would never fire) and its stream could not be read
from another process; files can.  Only a POSIX ``sh`` is needed in the image.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import DaemonExitedError, ExecTimeout, ReadinessTimeout, SandboxStartError, tail
from .sandbox import DAEMON_DIR, Sandbox
from .spec import Daemon, Probe, shell_quote

__all__ = ["DaemonState", "daemon_states", "launch_daemons", "mark_ready", "wait_ready"]

READY_MARK = f"{DAEMON_DIR}/.ready"
_EXITED_RC = 213  # exec-probe wrapper: "the daemon had already exited"
_EXITED_MARK = "__pytest_modal_sandbox_daemon_exited__"


@dataclass(frozen=True)
class DaemonState:
    name: str
    state: str  # "running", "exited" or "unknown"
    exit_code: int | None = None
    restarts: int = 0


def _dir(daemon: Daemon | str) -> str:
    name = daemon if isinstance(daemon, str) else daemon.name
    return f"{DAEMON_DIR}/{name}"


def _run_script(daemon: Daemon) -> str:
    """The script the supervisor runs for one attempt: workdir, env, then the command."""
    lines = []
    if daemon.workdir:
        lines.append(f"cd {shell_quote(daemon.workdir)} || exit 126")
    lines.extend(f"export {key}={shell_quote(value)}" for key, value in daemon.env.items())
    if isinstance(daemon.command, str):
        lines.append(daemon.command)
    else:
        lines.append("exec " + " ".join(shell_quote(a) for a in daemon.command))
    return "\n".join(lines) + "\n"


def _supervisor_script(daemon: Daemon) -> str:
    d = shell_quote(_dir(daemon))
    start = f'sh {d}/run >>{d}/log 2>&1 </dev/null & echo $! > {d}/pid; wait $!; rc=$?'
    if not daemon.restart:
        return f"{start}\necho $rc > {d}/exit.tmp && mv {d}/exit.tmp {d}/exit\n"
    note = shell_quote(f"[pytest-modal-sandbox] daemon {daemon.name} exited with code")
    return (
        "n=0\nwhile :; do\n"
        f"  {start}\n"
        f"  n=$((n+1)); echo $rc > {d}/last_exit; echo $n > {d}/restarts\n"
        f'  echo {note} "$rc; restarting" >> {d}/log\n'
        "  sleep 1\ndone\n"
    )


def launch_script(daemons: Sequence[Daemon]) -> str:
    """One shell script that starts every daemon detached and returns at once."""
    parts = ["set -e", f"mkdir -p {DAEMON_DIR}", f"rm -f {READY_MARK}"]
    for daemon in daemons:
        d = shell_quote(_dir(daemon))
        parts += [
            f"mkdir -p {d}",
            f"rm -f {d}/exit {d}/pid {d}/last_exit {d}/restarts",
            f": > {d}/log",
            f"printf '%s' {shell_quote(_run_script(daemon))} > {d}/run",
            f"printf '%s' {shell_quote(_supervisor_script(daemon))} > {d}/supervise",
            "if command -v setsid >/dev/null 2>&1; then"
            f" setsid sh {d}/supervise </dev/null >/dev/null 2>&1 &"
            f" else sh {d}/supervise </dev/null >/dev/null 2>&1 & fi",
        ]
    return "\n".join(parts) + "\n"


def launch_daemons(sandbox: Sandbox) -> None:
    """Start every daemon of the sandbox's spec (one exec for all of them)."""
    if not sandbox.spec.daemons:
        return
    res = sandbox.exec("sh", "-c", launch_script(sandbox.spec.daemons), timeout=60)
    if res.returncode != 0:
        raise SandboxStartError(
            f"could not launch daemons in sandbox {sandbox.id} (exit {res.returncode}); "
            f"the image needs a POSIX sh:\n{tail(str(res.stderr) or str(res.stdout))}"
        )


def daemon_states(sandbox: Sandbox, names: Sequence[str] | None = None) -> list[DaemonState]:
    """Each daemon's state, read in one exec."""
    names = [d.name for d in sandbox.spec.daemons] if names is None else list(names)
    if not names:
        return []
    script = (
        'for n in "$@"; do d=' + DAEMON_DIR + '/$n; r=$(cat "$d/restarts" 2>/dev/null || echo 0); '
        'if [ -f "$d/exit" ]; then echo "$n exited $(cat "$d/exit") $r"; '
        'elif [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then '
        'echo "$n running - $r"; '
        'else echo "$n unknown - $r"; fi; done'
    )
    res = sandbox.exec("sh", "-c", script, "sh", *names, timeout=30)
    states = []
    for line in str(res.stdout).splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        name, state, code, restarts = parts
        states.append(
            DaemonState(
                name,
                state,
                int(code) if code.lstrip("-").isdigit() else None,
                int(restarts) if restarts.isdigit() else 0,
            )
        )
    return states


def mark_ready(sandbox: Sandbox) -> None:
    """Leave a mark that every daemon passed readiness (so an attaching process can tell)."""
    sandbox.exec("sh", "-c", f"mkdir -p {DAEMON_DIR} && : > {READY_MARK}", timeout=30).check()


def is_marked_ready(sandbox: Sandbox) -> bool:
    return sandbox.exec("test", "-f", READY_MARK, timeout=30).returncode == 0


# -- readiness ----------------------------------------------------------------------------


def wait_ready(sandbox: Sandbox, *, log_lines: int = 20, started: float | None = None) -> None:
    """Wait until every daemon's probe passes; fail fast, with its log, if one exits."""
    started = time.monotonic() if started is None else started
    for daemon in sandbox.spec.daemons:
        if daemon.ready is not None:
            _Waiter(sandbox, daemon, daemon.ready, started + daemon.ready.timeout, log_lines).run()
    mark_ready(sandbox)


class _Waiter:
    def __init__(
        self, sandbox: Sandbox, daemon: Daemon, probe: Probe, deadline: float, log_lines: int
    ) -> None:
        self.sandbox = sandbox
        self.daemon = daemon
        self.probe = probe
        self.deadline = deadline
        self.log_lines = log_lines

    def run(self) -> None:
        checks: dict[str, Callable[[], bool]] = {
            "tcp": self.tcp,
            "http": self.http,
            "log": self.log,
            "exec": self.exec_probe,
        }
        check = checks[self.probe.kind]
        if self.probe.kind == "tcp":  # one in-sandbox loop; no polling round trips
            if not check():
                self.timed_out()
            return
        delay = 0.05
        while True:
            if check():
                return
            if time.monotonic() + delay > self.deadline:
                self.timed_out()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.1)

    # each check returns True when ready, False when not yet, raises when the daemon exited

    def tcp(self) -> bool:
        port = self.probe.port
        assert port is not None
        d = shell_quote(_dir(self.daemon))
        script = (
            f"hex={port:04X}\n"
            "while :; do\n"
            "  for f in /proc/net/tcp /proc/net/tcp6; do\n"
            '    [ -r "$f" ] || continue\n'
            "    while read -r sl local rem st rest; do\n"
            '      case "$local" in *:"$hex") [ "$st" = 0A ] && { echo READY; exit 0; } ;; esac\n'
            '    done < "$f"\n'
            "  done\n"
            f"  if [ -f {d}/exit ]; then echo EXITED $(cat {d}/exit); exit 0; fi\n"
            "  sleep 0.05 2>/dev/null || sleep 1\n"
            "done\n"
        )
        try:
            res = self.sandbox.exec("sh", "-c", script, timeout=self.remaining())
        except ExecTimeout:
            return False
        out = str(res.stdout).split()
        if out[:1] == ["READY"]:
            return True
        if out[:1] == ["EXITED"]:
            self.exited(_int(out[1]) if len(out) > 1 else None)
        raise SandboxStartError(
            f"readiness check for daemon {self.daemon.name!r} failed to run "
            f"(exit {res.returncode}): {tail(str(res.stderr))}"
        )

    def exec_probe(self) -> bool:
        d = _dir(self.daemon)
        wrapper = (
            f'if [ -f "$0/exit" ]; then echo {_EXITED_MARK} $(cat "$0/exit") >&2; '
            f'exit {_EXITED_RC}; fi; exec "$@"'
        )
        timeout = min(self.remaining(), 10.0)
        try:
            res = self.sandbox.exec("sh", "-c", wrapper, d, *self.probe.argv, timeout=timeout)
        except ExecTimeout:
            return False
        if res.returncode == _EXITED_RC and str(res.stderr).startswith(_EXITED_MARK):
            self.exited(_int(str(res.stderr).split()[1]))
        return res.returncode == 0

    def log(self) -> bool:
        d = _dir(self.daemon)
        res = self.sandbox.exec(
            "sh", "-c", 'cat "$0/exit" 2>/dev/null; echo; cat "$0/log" 2>/dev/null', d, timeout=30
        )
        exit_line, _, log = str(res.stdout).partition("\n")
        assert self.probe.pattern is not None
        if re.search(self.probe.pattern, log, re.MULTILINE):
            return True
        if exit_line.strip():
            self.exited(_int(exit_line.strip()))
        return False

    def http(self) -> bool:
        assert self.probe.port is not None
        url = self.sandbox.url(self.probe.port).rstrip("/") + self.probe.path
        try:
            with urllib.request.urlopen(url, timeout=min(self.remaining(), 5.0)) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError):
            status = None
        if status == self.probe.status:
            return True
        state = daemon_states(self.sandbox, [self.daemon.name])
        if state and state[0].state == "exited":
            self.exited(state[0].exit_code)
        return False

    # -- failures --------------------------------------------------------------------------

    def log_tail(self) -> str:
        try:
            return tail(self.sandbox.logs(self.daemon.name), self.log_lines)
        except Exception as exc:  # the sandbox itself may be gone; say so instead
            return f"(log unavailable: {exc})"

    def exited(self, code: int | None) -> None:
        log = self.log_tail()
        raise DaemonExitedError(
            f"daemon {self.daemon.name!r} exited with code {code} before it was ready "
            f"(waiting for {self.probe.describe()})\n"
            f"--- last {self.log_lines} lines of its log ---\n{log or '(empty)'}",
            daemon=self.daemon.name,
            exit_code=code,
            log_tail=log,
        )

    def timed_out(self) -> None:
        log = self.log_tail()
        raise ReadinessTimeout(
            f"daemon {self.daemon.name!r} was not ready after {self.probe.timeout:g}s "
            f"(waiting for {self.probe.describe()}); "
            "raise Probe(..., timeout=) if it needs longer\n"
            f"--- last {self.log_lines} lines of its log ---\n{log or '(empty)'}",
            daemon=self.daemon.name,
            log_tail=log,
        )


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
