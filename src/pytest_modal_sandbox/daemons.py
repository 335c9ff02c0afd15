"""Daemons and readiness, written once on top of ``exec`` so every backend behaves the same.

A daemon is launched by one short exec that starts a supervisor shell in the background
(``setsid`` when the image has it) with stdout/stderr appended to a log file, and its pid and
exit code in files next to it (``/tmp/.sandbox-daemons/<name>/``).  A long-lived exec would count
as activity forever on Modal (``idle_timeout`` would never fire) and its stream could not be read
from another process; files can.  Only a POSIX ``sh`` is needed in the image.
"""

from __future__ import annotations

import math
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .backends.protocol import NativeReadiness
from .errors import DaemonExitedError, ExecTimeout, ReadinessTimeout, SandboxStartError, tail
from .sandbox import DAEMON_DIR, Sandbox
from .scrub import Scrubber
from .spec import Daemon, Probe, shell_quote

__all__ = ["DaemonState", "daemon_states", "mark_ready", "start_daemons"]

READY_MARK = f"{DAEMON_DIR}/.ready"
_EXITED_RC = 213  # exec-probe wrapper: "the daemon had already exited"
_EXITED_MARK = "__pytest_modal_sandbox_daemon_exited__"


@dataclass(frozen=True)
class DaemonState:
    """A daemon as its files in the sandbox describe it (and its log's last lines, if asked)."""

    name: str
    state: str  # "running", "exited" or "unknown"
    exit_code: int | None = None
    restarts: int = 0
    log_tail: str = ""

    def headline(self) -> str:
        state = self.state
        if self.state == "exited":
            state = f"exited with code {self.exit_code}"
        elif self.state == "unknown":
            state = "not running (never launched, or its sandbox is gone)"
        if self.restarts:
            state += f", restarted {self.restarts} time" + ("" if self.restarts == 1 else "s")
        return f"daemon {self.name}: {state}"


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
    start = f"sh {d}/run >>{d}/log 2>&1 </dev/null & echo $! > {d}/pid; wait $!; rc=$?"
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
    # no "rm -f READY_MARK": with Modal's own probe this script is fire-and-forget, and may
    # run after the probe passed and the mark was written (a new sandbox has no mark)
    parts = ["set -e", f"mkdir -p {DAEMON_DIR}"]
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


# $1: a boundary line, $2: log lines wanted (0: none), then the daemon names
_STATUS = (
    'B=$1; N=$2; shift 2; for n in "$@"; do d=' + DAEMON_DIR + "/$n; "
    'r=$(cat "$d/restarts" 2>/dev/null || echo 0); '
    'if [ -f "$d/exit" ]; then s="exited $(cat "$d/exit")"; '
    'elif [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then s="running -"; '
    'else s="unknown -"; fi; '
    'echo "$B $n $s $r"; '
    'if [ "$N" -gt 0 ]; then tail -n "$N" "$d/log" 2>/dev/null || cat "$d/log" 2>/dev/null; fi; '
    'printf "\\n%s\\n" "$B-end"; done'
)


def daemon_states(
    sandbox: Sandbox, names: Sequence[str] | None = None, *, log_lines: int = 0
) -> list[DaemonState]:
    """Each daemon's state (and the last ``log_lines`` of its log), in one exec whatever the
    number of daemons: on Modal an exec is a network round trip."""
    names = [d.name for d in sandbox.spec.daemons] if names is None else list(names)
    if not names:
        return []
    boundary = "@@pms-" + secrets.token_hex(6)
    res = sandbox.exec("sh", "-c", _STATUS, "sh", boundary, str(log_lines), *names, timeout=30)
    return _parse_states(str(res.stdout), boundary)


def _parse_states(out: str, boundary: str) -> list[DaemonState]:
    states = []
    for chunk in out.split(f"\n{boundary}-end\n"):
        head, _, body = chunk.lstrip("\n").partition("\n")
        parts = head.split()
        if len(parts) != 5 or parts[0] != boundary:
            continue
        _, name, state, code, restarts = parts
        states.append(
            DaemonState(
                name,
                state,
                int(code) if code.lstrip("-").isdigit() else None,
                int(restarts) if restarts.isdigit() else 0,
                body,
            )
        )
    return states


def mark_ready(sandbox: Sandbox) -> None:
    """Leave a mark that every daemon passed readiness (so an attaching process can tell)."""
    sandbox.exec("sh", "-c", f"mkdir -p {DAEMON_DIR} && : > {READY_MARK}", timeout=30).check()


def is_marked_ready(sandbox: Sandbox) -> bool:
    return sandbox.exec("test", "-f", READY_MARK, timeout=30).returncode == 0


# -- readiness ----------------------------------------------------------------------------

# Time in centiseconds from /proc/uptime (a builtin read: no fork per poll); without it t
# stays 0 and the exec's own timeout ends the wait.
_TCP_WAIT = """
tick() {
  t=0
  read -r up _ < /proc/uptime 2>/dev/null || return 0
  s=${up%.*}; c=${up#*.}; c=${c#0}
  t=$((s * 100 + ${c:-0}))
}
tick; t0=$t
wait_tcp() {
  while :; do
    for f in /proc/net/tcp /proc/net/tcp6; do
      [ -r "$f" ] || continue
      while read -r sl local rem st rest; do
        case "$local" in *:"$2") [ "$st" = 0A ] && { echo "READY $1"; return 0; } ;; esac
      done < "$f"
    done
    if [ -f "$4/exit" ]; then echo "EXITED $1 $(cat "$4/exit")"; exit 0; fi
    tick
    if [ "$t0" -gt 0 ] && [ $((t - t0)) -ge "$3" ]; then echo "TIMEOUT $1"; exit 0; fi
    sleep 0.05 2>/dev/null || sleep 1
  done
}
"""


def start_daemons(
    sandbox: Sandbox,
    *,
    mark: bool = False,
    log_lines: int = 20,
    native: NativeReadiness | None = None,
) -> None:
    """Launch every daemon and wait until each one's probe passes; fail fast, with its log,
    if one exits.  ``mark`` leaves the ready mark (for processes attaching later).

    Round trips are what a sandbox costs on Modal, so: one exec launches every daemon *and*
    waits for the TCP probes inside the sandbox; with Modal's own readiness probe the launch is
    fire-and-forget and the wait is one RPC (``native``: the sandbox's backend handle, when it
    has such a probe).  Other probes poll from here.
    """
    spec = sandbox.spec
    started = time.monotonic()
    probed = [(d, d.ready) for d in spec.daemons if d.ready is not None]
    rest: list[tuple[Daemon, Probe]] = []
    if len(probed) == 1 and native is not None and native.has_native_probe:
        daemon, probe = probed[0]
        _Waiter(sandbox, daemon, probe, started + probe.timeout, log_lines).native(native)
    else:
        tcp = [(d, p) for d, p in probed if p.kind == "tcp"]
        rest = [(d, p) for d, p in probed if p.kind != "tcp"]
        if spec.daemons:
            _launch_and_wait_tcp(sandbox, tcp, started, log_lines, mark=mark and not rest)
            mark = mark and bool(rest)
    for daemon, probe in rest:
        _Waiter(sandbox, daemon, probe, started + probe.timeout, log_lines).run()
    if mark:
        mark_ready(sandbox)


def _launch_and_wait_tcp(
    sandbox: Sandbox,
    tcp: Sequence[tuple[Daemon, Probe]],
    started: float,
    log_lines: int,
    *,
    mark: bool,
) -> None:
    """One exec: launch every daemon, wait for the TCP probes in the sandbox, maybe mark."""
    script = launch_script(sandbox.spec.daemons)
    waiters = {d.name: _Waiter(sandbox, d, p, started + p.timeout, log_lines) for d, p in tcp}
    if tcp:
        script += _TCP_WAIT
        for daemon, probe in tcp:
            limit = max(1, math.ceil(probe.timeout * 100))  # centiseconds
            d = shell_quote(_dir(daemon))
            script += f"wait_tcp {daemon.name} {probe.port:04X} {limit} {d}\n"
    if mark:
        script += f": > {READY_MARK}\n"
    script += "echo ALL-READY\n"
    timeout = max([p.timeout for _, p in tcp] or [0.0]) + 30.0
    try:
        res = sandbox.exec("sh", "-c", script, timeout=timeout)
    except ExecTimeout:  # no `date` in the image: the exec's own deadline ended the wait
        next(iter(waiters.values())).timed_out()
        raise
    lines = str(res.stdout).splitlines()
    if "ALL-READY" in lines:
        return
    for line in lines:
        word, _, rest = line.partition(" ")
        name, _, code = rest.partition(" ")
        if word == "EXITED" and name in waiters:
            waiters[name].exited(_int(code))
        if word == "TIMEOUT" and name in waiters:
            waiters[name].timed_out()
    raise SandboxStartError(
        f"could not launch daemons in sandbox {sandbox.id} (exit {res.returncode}); "
        f"the image needs a POSIX sh:\n{tail(str(res.stderr) or str(res.stdout))}"
    )


class _Waiter:
    def __init__(
        self, sandbox: Sandbox, daemon: Daemon, probe: Probe, deadline: float, log_lines: int
    ) -> None:
        self.sandbox = sandbox
        self.daemon = daemon
        self.probe = probe
        self.deadline = deadline
        self.log_lines = log_lines
        self.state_checked = time.monotonic()  # the launch just happened: no check needed yet

    def run(self) -> None:
        """Poll the probe from here (http, log and exec probes)."""
        checks: dict[str, Callable[[], bool]] = {
            "http": self.http,
            "log": self.log,
            "exec": self.exec_probe,
        }
        check = checks[self.probe.kind]
        delay = 0.05
        while True:
            if check():
                return
            if time.monotonic() + delay > self.deadline:
                self.timed_out()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def native(self, impl: NativeReadiness) -> None:
        """The backend's own probe (Modal's readiness probe): launch without waiting, then
        wait in growing chunks, checking between chunks that the daemon is still alive."""
        impl.spawn(["sh", "-c", launch_script(self.sandbox.spec.daemons)])
        chunk = 1.0
        while True:
            if impl.wait_native_ready(min(chunk, self.remaining())):
                return
            state = daemon_states(self.sandbox, [self.daemon.name])
            if state and state[0].state == "exited":
                self.exited(state[0].exit_code)
            if not state or state[0].state == "unknown":
                raise SandboxStartError(
                    f"daemon {self.daemon.name!r} was not launched in sandbox "
                    f"{self.sandbox.id}; the image needs a POSIX sh"
                )
            if time.monotonic() >= self.deadline:
                self.timed_out()
            chunk = min(chunk * 2, 10.0)

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.1)

    # each check returns True when ready, False when not yet, raises when the daemon exited

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
        # is the daemon still alive?  An exec is a round trip on Modal: ask at most every 0.5 s
        now = time.monotonic()
        if now - self.state_checked >= 0.5:
            self.state_checked = now
            state = daemon_states(self.sandbox, [self.daemon.name])
            if state and state[0].state == "exited":
                self.exited(state[0].exit_code)
        return False

    # -- failures --------------------------------------------------------------------------

    def log_tail(self) -> str:
        """The last lines of the daemon's log, with the spec's secret values scrubbed (the
        error carrying it is printed by pytest and by scripts alike)."""
        try:
            text = tail(self.sandbox.logs(self.daemon.name), self.log_lines)
        except Exception as exc:  # the sandbox itself may be gone; say so instead
            text = f"(log unavailable: {exc})"
        return Scrubber(self.sandbox.spec.secret_values()).text(text)

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
