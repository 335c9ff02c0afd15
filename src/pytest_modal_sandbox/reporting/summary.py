"""The end-of-run summary: counts per backend, p50/max start times, the slowest sandboxes,
and how many were started ahead of their tests.

Counts come from the run's ledger (every process's created/terminated/kept events), start
times from the starts' events (:mod:`.starts`), "leaked" from asking the backend after the
end-of-run sweep.  pytest-free: :func:`summary_lines` returns the text.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .starts import StartState

__all__ = ["Summary", "summary_lines"]


@dataclass
class Summary:
    backend: str
    created: set[str] = field(default_factory=set)
    terminated: set[str] = field(default_factory=set)
    kept: dict[str, float | None] = field(default_factory=dict)  # id -> until (if known)
    leaked: list[str] = field(default_factory=list)
    starts: list[StartState] = field(default_factory=list)
    taken: int = 0  # sandboxes started ahead that went to their test
    tests: dict[str, str] = field(default_factory=dict)  # id -> test/fixture label

    def add_ledger(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for e in entries:
            sid = str(e.get("id", ""))
            kind = e.get("event")
            if kind == "created":
                self.created.add(sid)
                if e.get("test"):
                    self.tests.setdefault(sid, str(e["test"]))
            elif kind == "terminated":
                self.terminated.add(sid)
            elif kind == "kept":
                self.kept.setdefault(sid, None)


def _p50(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f}s" if values else "-"


def _max(values: Sequence[float]) -> str:
    return f"{max(values):.2f}s" if values else "-"


def summary_lines(s: Summary, *, slowest: int = 3) -> list[str]:
    kept = [k for k in s.kept if k not in s.terminated]
    ok = [r for r in s.starts if r.ready is not None and not r.attached]
    failed = [r for r in s.starts if r.ended is not None and not r.cancelled]
    head = (
        f"{s.backend}: {len(s.created)} created, {len(s.terminated - set(kept))} terminated, "
        f"{len(kept)} kept, {len(s.leaked)} leaked"
    )
    if failed:
        head += f", {len(failed)} failed to start"
    lines = [head]
    creates = [r.create_seconds for r in ok if r.create_seconds is not None]
    readies = [r.ready_seconds for r in ok if r.ready_seconds is not None]
    if creates:
        lines.append(
            f"  create p50 {_p50(creates)}, max {_max(creates)}; "
            f"ready p50 {_p50(readies)}, max {_max(readies)}  ({len(ok)} started)"
        )
    ahead = sum(1 for r in s.starts if r.ahead)
    if ahead:
        lines.append(f"  started ahead: {ahead}, used {s.taken}, wasted {ahead - s.taken}")
    if ok and slowest:
        top = sorted(ok, key=lambda r: -r.total)[:slowest]
        lines.append("  slowest:")
        for r in top:
            where = f" [{r.worker}]" if r.worker not in ("", "main") else ""
            lines.append(
                f"    {r.total:6.2f}s  {r.sandbox_id}  {r.label}{where}  "
                f"(create {r.create_seconds or 0:.2f}s + ready {r.ready_seconds or 0:.2f}s)"
            )
    for r in failed[:slowest]:
        lines.append(f"  failed: {r.label}: {r.error}")
    for sid in kept:
        until = s.kept.get(sid)
        when = time.strftime(" until %H:%M:%S UTC", time.gmtime(until)) if until else ""
        test = s.tests.get(sid, "")
        lines.append(
            f"  kept{when}: {sid}" + (f" ({test})" if test else "") + " - its failure report "
            "says how to reach it"
        )
    for sid in s.leaked:
        lines.append(f"  LEAKED: {sid} is still running after the end-of-run sweep")
    return lines
