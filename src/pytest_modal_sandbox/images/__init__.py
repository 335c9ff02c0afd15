"""Real OCI images for the local runtime: pull, verify, unpack and cache.

``ImageStore().get("redis:7-alpine")`` returns an :class:`ImageRoot` whose ``path`` is a
read-only root filesystem to run a sandbox in (``SandboxConfig(rootfs=str(root.path))``), with
the image's ``env``/``workdir``.  See ``store.py`` for the cache, ``client.py`` for the registry
protocol and the choice of stdlib over a library, ``auth.py`` for credentials and the
environment variables.
"""

from __future__ import annotations

from .errors import (
    ImageAccessDenied,
    ImageDigestMismatch,
    ImageError,
    ImageNotFound,
    ImageReferenceError,
    LayerError,
    PlatformNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from .reference import Reference, parse_reference
from .store import CachedImage, ImageRoot, ImageStore

__all__ = [
    "CachedImage",
    "ImageAccessDenied",
    "ImageDigestMismatch",
    "ImageError",
    "ImageNotFound",
    "ImageReferenceError",
    "ImageRoot",
    "ImageStore",
    "LayerError",
    "PlatformNotFound",
    "Reference",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachable",
    "parse_reference",
]
