"""What a failure report says about a sandbox: backend, id, image, tunnels, daemons, timings.

Everything about the daemons (state, exit code, restarts and the last N lines of each log) is
read in **one** exec, whatever the number of daemons: on Modal each exec is a network round
trip.  pytest-free; the caller scrubs secrets from the text.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ..sandbox import DAEMON_DIR, Sandbox

__all__ = ["DaemonReport", "dashboard_url", "describe", "gather_daemons"]

_GATHER = (
    'B=$1; N=$2; shift 2; for n in "$@"; do d=' + DAEMON_DIR + "/$n; "
    'r=$(cat "$d/restarts" 2>/dev/null || echo 0); '
    'if [ -f "$d/exit" ]; then s="exited $(cat "$d/exit")"; '
    'elif [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then s="running -"; '
    'else s="unknown -"; fi; '
    'echo "$B $n $s $r"; '
    'if [ "$N" -gt 0 ]; then tail -n "$N" "$d/log" 2>/dev/null || cat "$d/log" 2>/dev/null; fi; '
    'printf "\\n%s\\n" "$B-end"; done'
)


@dataclass(frozen=True)
class DaemonReport:
    name: str
    state: str  # running, exited or unknown
    exit_code: int | None
    restarts: int
    log_tail: str

    def headline(self) -> str:
        state = self.state
        if self.state == "exited":
            state = f"exited with code {self.exit_code}"
        elif self.state == "unknown":
            state = "not running (never launched, or its sandbox is gone)"
        if self.restarts:
            state += f", restarted {self.restarts} time" + ("" if self.restarts == 1 else "s")
        return f"daemon {self.name}: {state}"


def gather_daemons(sandbox: Sandbox, lines: int) -> list[DaemonReport]:
    """Every daemon's state and log tail, in one exec (none if the spec has no daemons)."""
    names = [d.name for d in sandbox.spec.daemons]
    if not names:
        return []
    boundary = "@@pms-" + secrets.token_hex(6)
    res = sandbox.exec("sh", "-c", _GATHER, "sh", boundary, str(lines), *names, timeout=30)
    return _parse(str(res.stdout), boundary)


def _parse(out: str, boundary: str) -> list[DaemonReport]:
    reports = []
    for chunk in out.split(f"\n{boundary}-end\n"):
        head, _, body = chunk.lstrip("\n").partition("\n")
        parts = head.split()
        if len(parts) != 5 or parts[0] != boundary:
            continue
        _, name, state, code, restarts = parts
        reports.append(
            DaemonReport(
                name,
                state,
                int(code) if code.lstrip("-").isdigit() else None,
                int(restarts) if restarts.isdigit() else 0,
                body,
            )
        )
    return reports


def dashboard_url(sandbox: Sandbox) -> str | None:
    """Modal's dashboard page for the sandbox (the same ``/id/`` URL the SDK uses)."""
    if sandbox.backend == "modal" and sandbox.id.startswith("sb-"):
        return f"https://modal.com/id/{sandbox.id}"
    return None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def tunnel_lines(sandbox: Sandbox) -> list[str]:
    if not sandbox.spec.ports:
        return []
    try:
        tunnels = sandbox.tunnels
    except Exception as exc:  # the sandbox may be gone: say so, do not fail the report
        return [f"(unavailable: {exc})"]
    return [f"{port} -> {ep.url}" for port, ep in sorted(tunnels.items())]


def describe(
    sandbox: Sandbox,
    *,
    fixture: str,
    scope: str,
    log_lines: int,
    test_seconds: float | None,
    attached: bool = False,
    extra: str = "",
    scrub: Callable[[str], str] = lambda s: s,
) -> str:
    """The report section for one sandbox (scrubbed with ``scrub``)."""
    rows = [("backend", sandbox.backend)]
    url = dashboard_url(sandbox)
    rows.append(("id", sandbox.id + (f"  (dashboard: {url})" if url else "")))
    rows.append(("image", sandbox.spec.image_label()))
    rows.append(("fixture", f"{fixture} ({scope} scope)"))
    t = sandbox.timings
    start = (
        "started by another process (shared)"
        if attached
        else f"create {_seconds(t.create_seconds)}, ready {_seconds(t.ready_seconds)}"
    )
    rows.append(("timings", f"{start}, test {_seconds(test_seconds)}"))
    alive = not sandbox.terminated
    tunnels = tunnel_lines(sandbox) if alive else []
    for i, line in enumerate(tunnels):
        rows.append(("tunnels" if i == 0 else "", line))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if sandbox.spec.daemons:
        out.append("")
        out.extend(_daemon_lines(sandbox, log_lines, alive))
    if extra:
        out.extend(["", extra])
    return scrub("\n".join(out))


def _daemon_lines(sandbox: Sandbox, log_lines: int, alive: bool) -> list[str]:
    if not alive:
        return ["daemons: (the sandbox was already terminated; no state or logs)"]
    try:
        reports = gather_daemons(sandbox, log_lines)
    except Exception as exc:
        return [f"daemons: (state and logs unavailable: {exc})"]
    out = []
    for report in reports:
        out.append(report.headline())
        if log_lines <= 0:
            continue
        text = report.log_tail.rstrip("\n")
        if not text:
            out.append("  (log is empty)")
            continue
        out.append(f"  --- last {log_lines} lines of its log ---")
        out.extend("  " + line for line in text.splitlines())
    return out
