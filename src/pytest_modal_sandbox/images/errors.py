"""Typed errors for image pulls, under :class:`~pytest_modal_sandbox.errors.SandboxStartError`.

A sandbox whose image cannot be had cannot start, so every image error is a start error.  The
messages name the reference, the registry and the fix; the host mapping
(``--modal-sandbox-local-images=host``) and the Docker Hub mirror variable are the two ways out
when a registry cannot be reached.
"""

from __future__ import annotations

from ..errors import SandboxStartError

__all__ = [
    "HOST_MAPPING_HINT",
    "ImageAccessDenied",
    "ImageDigestMismatch",
    "ImageError",
    "ImageNotFound",
    "ImageReferenceError",
    "LayerError",
    "PlatformNotFound",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachable",
]

HOST_MAPPING_HINT = (
    "or run the image on the host filesystem explicitly with --modal-sandbox-local-images=host"
)


class ImageError(SandboxStartError):
    """Base class: the declared image could not be pulled, verified or unpacked."""


class ImageReferenceError(ImageError, ValueError):
    """The image reference string is malformed (says which part and why)."""


class ImageNotFound(ImageError):
    """The registry has no such repository, tag or digest."""


class PlatformNotFound(ImageNotFound):
    """The image exists but has no variant for this machine's platform."""


class RegistryError(ImageError):
    """The registry answered with an error we cannot do anything about (status and body)."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached (DNS, refused connection, TLS, timeout)."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials, or wants credentials we do not have."""


class ImageAccessDenied(ImageNotFound, RegistryAuthError):
    """The registry refused access: the repository does not exist or needs credentials.

    Registries (Docker Hub among them) answer both cases alike, so this is both a
    :class:`ImageNotFound` and a :class:`RegistryAuthError`.
    """


class ImageDigestMismatch(ImageError):
    """Downloaded content does not match its digest; nothing of it was kept."""


class LayerError(ImageError):
    """A layer is unsafe or broken (escaping paths, bad hard links, corrupt archive)."""
