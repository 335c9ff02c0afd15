"""The end-of-run summary: counts per backend, p50/max start times, the slowest sandboxes.

Counts come from the run's ledger (every process's created/terminated/kept events), start
times from the timing records workers attach to their reports, "leaked" from asking the backend
after the end-of-run sweep.  pytest-free: :func:`summary_lines` returns the text.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StartRecord", "Summary", "summary_lines"]


@dataclass(frozen=True)
class StartRecord:
    """One sandbox start as it travels on a report (``as_dict``/``from_dict``)."""

    id: str
    backend: str
    label: str
    worker: str
    create: float | None  # seconds from request to created
    ready: float | None  # seconds from created to ready
    error: str = ""

    @property
    def total(self) -> float:
        return (self.create or 0.0) + (self.ready or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "backend": self.backend,
            "label": self.label,
            "worker": self.worker,
            "create": self.create,
            "ready": self.ready,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StartRecord:
        return cls(
            str(d.get("id", "")),
            str(d.get("backend", "")),
            str(d.get("label", "")),
            str(d.get("worker", "")),
            d.get("create"),
            d.get("ready"),
            str(d.get("error", "")),
        )


@dataclass
class Summary:
    backend: str
    created: set[str] = field(default_factory=set)
    terminated: set[str] = field(default_factory=set)
    kept: dict[str, float | None] = field(default_factory=dict)  # id -> until (if known)
    leaked: list[str] = field(default_factory=list)
    starts: list[StartRecord] = field(default_factory=list)
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
    ok = [r for r in s.starts if not r.error]
    failed = [r for r in s.starts if r.error]
    head = (
        f"{s.backend}: {len(s.created)} created, {len(s.terminated - set(kept))} terminated, "
        f"{len(kept)} kept, {len(s.leaked)} leaked"
    )
    if failed:
        head += f", {len(failed)} failed to start"
    lines = [head]
    creates = [r.create for r in ok if r.create is not None]
    readies = [r.ready for r in ok if r.ready is not None]
    if creates:
        lines.append(
            f"  create p50 {_p50(creates)}, max {_max(creates)}; "
            f"ready p50 {_p50(readies)}, max {_max(readies)}  ({len(ok)} started)"
        )
    if ok and slowest:
        top = sorted(ok, key=lambda r: -r.total)[:slowest]
        lines.append("  slowest:")
        for r in top:
            where = f" [{r.worker}]" if r.worker not in ("", "main") else ""
            lines.append(
                f"    {r.total:6.2f}s  {r.id}  {r.label}{where}  "
                f"(create {r.create or 0:.2f}s + ready {r.ready or 0:.2f}s)"
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
