"""Manifests, indexes and image configs: parsing, validation and platform selection."""

from __future__ import annotations

import dataclasses
import json
import os
import platform as _platform
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any

from .client import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from .errors import ImageError, PlatformNotFound

__all__ = [
    "PLATFORM_ENV",
    "Descriptor",
    "ImageConfig",
    "Platform",
    "host_platform",
    "is_index",
    "parse_config",
    "parse_manifest",
    "select_platform",
]

PLATFORM_ENV = "PYTEST_MODAL_SANDBOX_PLATFORM"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def matches(self, other: Mapping[str, Any]) -> bool:
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        variant = str(other.get("variant") or "")
        if not variant or not self.variant:
            return True
        return variant == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """This machine's platform (``$PYTEST_MODAL_SANDBOX_PLATFORM`` overrides it)."""
    override = os.environ.get(PLATFORM_ENV)
    if override:
        return Platform.parse(override)
    machine = _platform.machine().lower()
    arch, variant = _ARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, data: Any, where: str) -> Descriptor:
        if not isinstance(data, dict):
            raise ImageError(f"{where}: a descriptor must be an object")
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ImageError(f"{where}: unsupported or invalid digest {digest!r} (sha256 only)")
        if not isinstance(size, int) or size < 0:
            raise ImageError(f"{where}: invalid size {size!r}")
        platform = data.get("platform")
        return cls(
            str(data.get("mediaType") or ""),
            digest,
            size,
            platform if isinstance(platform, dict) else None,
        )


def _load(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{what} is not a JSON object")
    return data


def is_index(body: bytes, media_type: str) -> bool:
    if media_type in (OCI_INDEX, DOCKER_LIST):
        return True
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        return False
    data = _load(body, "manifest")
    return "manifests" in data and "layers" not in data


def select_platform(body: bytes, what: str, platform: Platform) -> Descriptor:
    """Pick the manifest for ``platform`` from an index / manifest list."""
    data = _load(body, what)
    entries = data.get("manifests")
    if not isinstance(entries, list):
        raise ImageError(f"{what}: the index has no 'manifests' list")
    available: list[str] = []
    for i, raw in enumerate(entries):
        desc = Descriptor.parse(raw, f"{what} manifests[{i}]")
        plat = desc.platform or {}
        if desc.media_type in (OCI_INDEX, DOCKER_LIST):
            continue
        label = "/".join(str(plat.get(k) or "") for k in ("os", "architecture", "variant"))
        available.append(label.rstrip("/"))
        if platform.matches(plat):
            return desc
    shown = ", ".join(a for a in available if a and not a.startswith("unknown")) or "none"
    raise PlatformNotFound(
        f"{what} has no image for platform {platform} (available: {shown}); set "
        f"${PLATFORM_ENV} to pick another one if this machine can run it"
    )


def parse_manifest(body: bytes, media_type: str, what: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an image manifest (schema 2 / OCI)."""
    data = _load(body, what)
    if data.get("schemaVersion") == 1 or "fsLayers" in data:
        raise ImageError(
            f"{what} is a Docker schema 1 manifest, which is deprecated and not supported; "
            "push the image again with a current Docker or buildkit"
        )
    if data.get("schemaVersion") != 2:
        version = data.get("schemaVersion")
        raise ImageError(f"{what}: unsupported manifest (schemaVersion {version!r})")
    config = Descriptor.parse(data.get("config"), f"{what} config")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: the manifest has no 'layers' list")
    return config, [Descriptor.parse(x, f"{what} layers[{i}]") for i, x in enumerate(layers)]


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """An image's runtime config: what ``docker run IMAGE`` starts, and how.

    ``entrypoint``/``cmd`` are argv lists exactly as stored in the config (an empty tuple when
    unset): a Dockerfile's shell form was already turned into ``["/bin/sh", "-c", "..."]`` by the
    builder.  ``exposed_ports`` are Docker's ``"6379/tcp"`` keys.  ``reference`` and
    ``config_digest`` say which image this is (empty when parsed from bare bytes).
    """

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: Mapping[str, str]  # read-only: one config object is shared by every caller
    workdir: str | None
    user: str | None
    exposed_ports: tuple[str, ...]
    diff_ids: tuple[str, ...]
    platform: str
    reference: str = ""
    config_digest: str = ""

    @property
    def tcp_ports(self) -> tuple[int, ...]:
        """The exposed TCP ports, as numbers (``"8080/tcp"`` and a bare ``"8080"`` alike)."""
        out = []
        for spec in self.exposed_ports:
            port, _, proto = spec.partition("/")
            if proto in ("", "tcp") and port.isdigit():
                out.append(int(port))
        return tuple(out)


def _argv(value: Any, field: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # Docker reads a bare string as a one-word list (strslice)
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ImageError(f"{what}: config.{field} must be a list of strings, not {value!r}")


def parse_config(body: bytes, what: str) -> ImageConfig:
    data = _load(body, what)
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        cfg = {}
    env: dict[str, str] = {}
    for item in cfg.get("Env") or []:
        if isinstance(item, str):
            key, _, value = item.partition("=")
            if key:
                env[key] = value
    rootfs = data.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST.match(d) for d in diff_ids
    ):
        raise ImageError(f"{what}: rootfs.diff_ids is missing or not a list of sha256 digests")
    workdir = cfg.get("WorkingDir")
    user = cfg.get("User")
    ports = cfg.get("ExposedPorts")
    plat = "/".join(
        str(data.get(k) or "") for k in ("os", "architecture", "variant") if data.get(k)
    )
    return ImageConfig(
        entrypoint=_argv(cfg.get("Entrypoint"), "Entrypoint", what),
        cmd=_argv(cfg.get("Cmd"), "Cmd", what),
        env=types.MappingProxyType(env),
        workdir=workdir if isinstance(workdir, str) and workdir else None,
        user=user if isinstance(user, str) and user else None,
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        diff_ids=tuple(diff_ids),
        platform=plat,
    )


def check_layers(layers: Sequence[Descriptor], config: ImageConfig, what: str) -> None:
    if len(layers) != len(config.diff_ids):
        raise ImageError(
            f"{what}: the manifest lists {len(layers)} layers but the config has "
            f"{len(config.diff_ids)} diff_ids"
        )
