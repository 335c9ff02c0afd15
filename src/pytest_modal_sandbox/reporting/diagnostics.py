"""What a failure report says about a sandbox: backend, id, image, tunnels, daemons, timings.

Everything about the daemons (state, exit code, restarts and the last N lines of each log) is
read in **one** exec, whatever the number of daemons: on Modal each exec is a network round
trip.  pytest-free; the caller scrubs secrets from the text.
"""

from __future__ import annotations

from collections.abc import Callable

from ..daemons import daemon_states
from ..sandbox import Sandbox

__all__ = ["dashboard_url", "describe"]


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
        reports = daemon_states(sandbox, log_lines=log_lines)
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
