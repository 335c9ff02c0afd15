"""``Snapshot``: what :meth:`Sandbox.snapshot` returns, accepted wherever an image is.

A snapshot belongs to the backend that took it: on Modal (and the emulator) it is an Image id
(``modal.Image.from_id``); on the local backend a set of captured copy-on-write layers over the
image the sandbox ran (``runtime/snapshot.py``).  Used on another backend it is a clear error.
It is a plain value (JSON-able, hashable), so a snapshot taken by one xdist worker is handed to
the others as it is.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import SpecError

__all__ = ["Snapshot", "memory_refused"]


def memory_refused(backend: str) -> str:
    """Why ``snapshot(memory=True)`` is refused on ``backend`` (docs/how-to/snapshots.md)."""
    if backend == "modal":
        why = (
            "memory snapshots are not built for the modal backend yet (Modal's "
            "_experimental_snapshot needs sandboxes created with _experimental_enable_snapshot "
            "and clones restored with Sandbox._experimental_from_snapshot, which no offline "
            "test can check)"
        )
    else:
        why = (
            f"the {backend} backend cannot snapshot running processes faithfully (it would "
            "need CRIU, and Debian's CRIU 3.17 fails `criu check` on this kernel)"
        )
    return (
        f"snapshot(memory=True): {why}; take a filesystem snapshot (memory=False): its "
        "clones start their daemons again, with their probes (docs/how-to/snapshots.md)"
    )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A filesystem snapshot of a sandbox: pass it as ``image=`` to start clones of it."""

    backend: str  # the backend that took it: "local", "modal" or "emulator"
    id: str  # Modal: the Image id; local: the snapshot's directory name
    source: str  # the id of the sandbox it was taken of
    image: str | None = None  # local: the image the sandbox ran (None: the host's root)
    layers: tuple[tuple[str, str], ...] = ()  # local: (target, directory), newest first
    kept: bool = False  # outlives the run (local: until `images prune`; Modal: its ttl)

    def label(self) -> str:
        return f"snapshot {self.id} of {self.source}"

    def require_backend(self, backend: str) -> None:
        """Raise :class:`SpecError` unless this snapshot can be used on ``backend``."""
        if backend != self.backend:
            raise SpecError(
                f"image: {self.label()} was taken on the {self.backend} backend and cannot "
                f"start a sandbox on the {backend} backend; take the snapshot on {backend} "
                "(run the template there too)"
            )

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["layers"] = [list(pair) for pair in self.layers]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data: dict[str, Any] = json.loads(text)
        data["layers"] = tuple((str(t), str(d)) for t, d in data.get("layers", ()))
        return cls(**data)
