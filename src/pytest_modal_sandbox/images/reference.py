"""Parse and normalise image references the way ``docker pull`` does.

``redis`` is ``docker.io/library/redis:latest``; the first path component names a registry when it
contains ``.`` or ``:`` or is ``localhost``; ``name@sha256:<hex>`` pins a digest (a tag given as
well is kept for display, the digest wins).  Grammar from the distribution project's
``reference`` package.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import ImageReferenceError

__all__ = ["DOCKER_HUB", "Reference", "parse_reference"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_NAME = 255


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository[:tag][@digest]``."""

    registry: str  # as written ("docker.io", "localhost:5000", "ghcr.io")
    repository: str  # "library/redis"
    tag: str | None  # None only when a digest is given without a tag
    digest: str | None  # "sha256:<hex>"

    @property
    def is_docker_hub(self) -> bool:
        return self.registry == DOCKER_HUB

    @property
    def endpoint(self) -> str:
        """The host[:port] to talk to (Docker Hub's API lives on another host than its name)."""
        return DOCKER_HUB_ENDPOINT if self.is_docker_hub else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def lookup(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _bad(reference: str, why: str) -> ImageReferenceError:
    return ImageReferenceError(f"invalid image reference {reference!r}: {why}")


def parse_reference(reference: str) -> Reference:
    """Normalise ``reference``; raise :class:`ImageReferenceError` naming the bad part."""
    if not isinstance(reference, str):
        raise ImageReferenceError(
            f"invalid image reference {reference!r}: expected a string such as 'redis:7-alpine'"
        )
    text = reference.strip()
    if not text:
        raise _bad(reference, "it is empty")
    if any(c.isspace() for c in text):
        raise _bad(reference, "it contains whitespace")
    if "://" in text:
        raise _bad(reference, "give registry/name[:tag] without a URL scheme")

    digest: str | None = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not digest.startswith("sha256:"):
            raise _bad(reference, f"only sha256 digests are supported, got {digest!r}")
        if not _DIGEST.match(digest):
            raise _bad(reference, f"digest {digest!r} is not 'sha256:' and 64 lowercase hex digits")

    tag: str | None = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:  # a colon after the last slash separates the tag (else it is a port)
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.match(tag):
            raise _bad(
                reference,
                f"tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-' "
                "(not starting with '.' or '-')",
            )
    if not text:
        raise _bad(reference, "the repository name is missing")

    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, rest
        if not _DOMAIN.match(registry):
            raise _bad(reference, f"registry {registry!r} is not a valid host[:port]")
    else:
        registry, path = DOCKER_HUB, text
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"

    for component in path.split("/"):
        if not component:
            raise _bad(reference, "the repository name has an empty path component")
        if component != component.lower():
            raise _bad(reference, f"repository name {path!r} must be lowercase")
        if not _PATH_COMPONENT.match(component):
            raise _bad(
                reference,
                f"repository component {component!r} may only contain lowercase letters, digits "
                "and single separators ('.', '_', '__', '-')",
            )
    if len(f"{registry}/{path}") > _MAX_NAME:
        raise _bad(reference, f"the name is longer than {_MAX_NAME} characters")

    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
