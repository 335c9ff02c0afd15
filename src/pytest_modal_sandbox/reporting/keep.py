"""Keep-on-failure: a failed test's function-scoped sandbox stays alive for debugging.

The sandbox is untied from this process (:meth:`Sandbox.keep`), tagged
``pms-keep-until=<epoch>`` and recorded as a ``kept`` event: the end-of-run sweep skips ids with
a ``kept`` ledger entry, and a later run's stale sweep skips sandboxes whose tag lies in the
future and ends them once it has passed.  The keep never outlives the sandbox's own
``timeout``.  pytest-free.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..lifecycle.tags import KEEP_TAG
from ..sandbox import Sandbox
from .diagnostics import tunnel_lines

__all__ = ["keep", "keep_seconds", "kept_until", "reach"]


def keep_seconds(sandbox: Sandbox, minutes: float, now: float | None = None) -> float:
    """``minutes`` in seconds, cut to what the sandbox's timeout still allows (may be <= 0)."""
    now = time.time() if now is None else now
    started = sandbox.timings.created or sandbox.timings.requested
    left = float(sandbox.spec.timeout) - (now - started)
    return min(minutes * 60.0, left)


def kept_until(tags: Mapping[str, str], now: float | None = None) -> float | None:
    """The keep deadline in ``tags`` if it is still in the future, else None."""
    try:
        until = float(tags.get(KEEP_TAG, ""))
    except ValueError:
        return None
    now = time.time() if now is None else now
    return until if until > now else None


def keep(sandbox: Sandbox, seconds: float) -> float:
    """Keep ``sandbox`` for ``seconds``; returns the deadline (epoch seconds)."""
    until = time.time() + seconds
    sandbox.keep(seconds, tags={KEEP_TAG: f"{until:.0f}"})
    return until


def _shell_command(sandbox: Sandbox) -> str | None:
    try:
        return sandbox.shell_command()
    except Exception:  # a hint only: never let it hide the failure being reported
        return None


def reach(sandbox: Sandbox, until: float, run_id: str) -> str:
    """How to reach a kept sandbox: ids, tunnels and a command, per backend."""
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime(until))
    minutes = max(0.0, (until - time.time()) / 60)
    out = [f"KEPT ALIVE for debugging until {stamp} ({minutes:.1f} min), then swept:"]
    out.append(f"  id       {sandbox.id} (run {run_id})")
    tunnels = tunnel_lines(sandbox)
    note = {
        "local": " (these listeners live in this pytest process: they end with the run)",
        "emulator": "",
    }.get(sandbox.backend, "")
    for i, line in enumerate(tunnels):
        out.append(f"  {'tunnels' if i == 0 else '':<8} {line}{note if i == 0 else ''}")
    command = _shell_command(sandbox)
    if command:
        out.append(f"  shell    {command}")
    if sandbox.backend == "emulator":
        out.append("  note     the emulator is this run's own: the sandbox ends with the run")
    backend = "" if sandbox.backend == "emulator" else f" --backend {sandbox.backend}"
    if sandbox.backend != "emulator":
        out.append(f"  end now  python -m pytest_modal_sandbox reap --run {run_id}{backend}")
    return "\n".join(out)
