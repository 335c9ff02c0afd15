"""What happened to a sandbox, as one record that travels to the run's owner — pytest-free.

Every process sends its events through one channel: the only process consumes its own; an
xdist worker sends them to the controller as they happen (see ``xdist.py``).  The owner keeps
the lifecycle kinds in the run's ledger (what the sweeps and the summary count) and feeds the
start kinds to the progress view and the summary's timings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LIFECYCLE", "Event"]

LIFECYCLE = ("created", "terminated", "kept")
"""Kinds the ledger keeps.  A start also reports ``requested``, ``ready``, ``attached`` (a
``share="run"`` sandbox another process started), ``failed``, ``cancelled`` (ended before it was
ready: not needed any more) and ``taken`` (a sandbox started ahead went to its test)."""


@dataclass(frozen=True)
class Event:
    kind: str
    worker: str
    sandbox_id: str = ""
    share: str = ""
    test: str = ""  # the label the sandbox is tagged with: a test's node id, or fixture@node
    start: str = ""  # which start this belongs to (``<worker>:<n>``), for the progress view
    label: str = ""  # how the progress view and the summary name the start
    ahead: bool = False  # the start was made ahead of the test that needs it
    error: str = ""
    t: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
