"""Image definitions the client sends (``ImageGetOrCreate``) and the seam to real roots.

Every layer is accepted and recorded; building is instantaneous.  The first request for a
definition answers "not built yet" so the client joins the build stream (as against Modal on a
cache miss); later requests answer SUCCESS straight away (a cache hit, no join RPC).

:func:`rootfs_for_chain` is where a recorded chain becomes a root filesystem for the runtime.
Today every sandbox runs on the host root (``None``); when ``pytest_modal_sandbox.images``
can unpack OCI images, this is the one function to change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageLayer:
    """One ``ImageGetOrCreate`` request, reduced to what a local runtime could use."""

    id: str
    dockerfile_commands: tuple[str, ...]
    base_images: tuple[tuple[str, str], ...]  # (docker_tag, image_id), in request order
    namespace: int = 0

    @property
    def from_ref(self) -> str | None:
        """The ``FROM`` reference of this layer unless it builds on a base layer (``FROM base``)."""
        for command in self.dockerfile_commands:
            parts = command.split()
            if len(parts) >= 2 and parts[0].upper() == "FROM":
                ref = parts[1]
                return None if ref in {tag for tag, _ in self.base_images} else ref
        return None


@dataclass
class _Record:
    layer: ImageLayer
    built: bool = False


@dataclass
class ImageStore:
    """Image layers by id, deduplicated by their serialized definition."""

    _by_id: dict[str, _Record] = field(default_factory=dict)
    _by_key: dict[bytes, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get_or_create(
        self, key: bytes, make_layer: Callable[[], ImageLayer]
    ) -> tuple[ImageLayer, bool]:
        """The layer for ``key`` and whether it was already built (a cache hit)."""
        with self._lock:
            image_id = self._by_key.get(key)
            if image_id is not None:
                record = self._by_id[image_id]
                return record.layer, record.built
            layer = make_layer()
            self._by_key[key] = layer.id
            self._by_id[layer.id] = _Record(layer)
            return layer, False

    def mark_built(self, image_id: str) -> None:
        with self._lock:
            record = self._by_id.get(image_id)
            if record is not None:
                record.built = True

    def known(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._by_id

    def chain(self, image_id: str) -> list[ImageLayer]:
        """The layers from the base to ``image_id``; unknown (stale) ids contribute nothing."""
        out: list[ImageLayer] = []
        seen: set[str] = set()

        def visit(current: str) -> None:
            if current in seen:
                return
            seen.add(current)
            with self._lock:
                record = self._by_id.get(current)
            if record is None:
                return
            for _, base_id in record.layer.base_images:
                visit(base_id)
            out.append(record.layer)

        visit(image_id)
        return out


def registry_ref(chain: Sequence[ImageLayer]) -> str | None:
    """The registry reference the chain starts from (``FROM python:3.12-slim``), if any."""
    for layer in chain:
        ref = layer.from_ref
        if ref is not None:
            return ref
    return None


def rootfs_for_chain(chain: Sequence[ImageLayer]) -> str | None:
    """The root filesystem a sandbox of this image runs on: ``None`` = the host root.

    The seam for real images (issue 6): map ``registry_ref(chain)`` plus the ``RUN`` steps to
    an unpacked, cached root from ``pytest_modal_sandbox.images``.  Until then every image,
    known or stale, runs on the host root read-only, as the local backend does.
    """
    del chain
    return None
