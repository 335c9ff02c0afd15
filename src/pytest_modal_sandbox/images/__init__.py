"""Real OCI images for the local runtime: pull, verify, unpack and cache.

``ImageStore().get("redis:7-alpine")`` returns an :class:`ImageRoot` whose ``path`` is a
read-only root filesystem to run a sandbox in (``SandboxConfig(rootfs=str(root.path))``), with
the image's ``env``/``workdir``.  See ``store.py`` for the cache, ``client.py`` for the registry
protocol and the choice of stdlib over a library, ``unpack.py`` for the layer rules.

``image_config("redis:7")`` returns an image's runtime config (ENTRYPOINT, CMD, env, workdir,
user, exposed ports) without pulling its layers, and ``image_command(config, args=..., env=...)``
the argv/env/workdir ``docker run IMAGE [args]`` would use (``config.py``, ``command.py``).

Environment variables:

``PYTEST_MODAL_SANDBOX_CACHE_DIR``
    cache root (images live in its ``images/``); default ``~/.cache/pytest-modal-sandbox``.
``PYTEST_MODAL_SANDBOX_REGISTRY_AUTH``
    JSON ``{"registry": "user:password", ...}`` (or ``{"username":..,"password":..}`` /
    ``{"auth": base64}`` values); checked before Docker's ``config.json``.
``DOCKER_CONFIG``
    directory of Docker's ``config.json`` (``auths``, ``credHelpers``, ``credsStore``).
``PYTEST_MODAL_SANDBOX_REGISTRY_MIRROR``
    a Docker Hub mirror (``host[:port]`` or URL), tried before Docker Hub.
``PYTEST_MODAL_SANDBOX_INSECURE_REGISTRIES``
    comma-separated ``host[:port]`` spoken to over plain HTTP (loopback always is).
``PYTEST_MODAL_SANDBOX_PLATFORM``
    ``os/arch[/variant]`` to pull instead of this machine's platform.
``SSL_CERT_FILE``
    CA bundle for registries behind a private CA (Python's standard variable).

CLI: ``python -m pytest_modal_sandbox images {list,pull,prune}`` (:func:`cli.main`).
"""

from __future__ import annotations

from .command import ImageCommand, image_command
from .config import image_config
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
from .manifest import ImageConfig
from .reference import Reference, parse_reference
from .store import CachedImage, ImageRoot, ImageStore

__all__ = [
    "CachedImage",
    "ImageAccessDenied",
    "ImageCommand",
    "ImageConfig",
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
    "image_command",
    "image_config",
    "parse_reference",
]
