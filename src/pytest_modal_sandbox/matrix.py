"""CI matrices: swap images from the command line, and readable, stable parametrization ids.

``--modal-sandbox-image NEW`` runs every sandbox on ``NEW``; ``--modal-sandbox-image OLD=NEW``
replaces only images matching ``OLD`` (a shell-style pattern: ``python:3.*=python:3.13-slim``).
Repeat the option for several mappings; the first match wins.  The environment variable
``PYTEST_MODAL_SANDBOX_IMAGE`` takes the same values separated by commas, and is used when the
option is absent — so one workflow file can run the suite once per matrix job.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:
    from .spec import SandboxSpec

__all__ = ["IMAGE_ENV", "ImageOverride", "parametrize_id", "parse_image_override"]

IMAGE_ENV = "PYTEST_MODAL_SANDBOX_IMAGE"
IMAGE_HELP = (
    "run sandboxes on another image: NEW replaces every image, OLD=NEW only images matching "
    "the pattern OLD (repeatable; first match wins); env: " + IMAGE_ENV + " (comma-separated)"
)


@dataclass(frozen=True)
class ImageOverride:
    everything: str | None = None
    mappings: tuple[tuple[str, str], ...] = ()

    def apply(self, spec: SandboxSpec) -> SandboxSpec:
        image = spec.image
        if image is not None and not isinstance(image, str):
            return spec  # a modal.Image object is the test's explicit choice
        for pattern, new in self.mappings:
            if image is not None and fnmatch.fnmatchcase(image, pattern):
                return spec.replace(image=new)
        if self.everything is not None:
            return spec.replace(image=self.everything)
        return spec

    def __bool__(self) -> bool:
        return self.everything is not None or bool(self.mappings)


def parse_image_override(values: Sequence[str], where: str) -> ImageOverride:
    """Parse option values; raise ``SpecError`` naming ``where`` and the bad value."""
    everything: str | None = None
    mappings: list[tuple[str, str]] = []
    for raw in values:
        value = raw.strip()
        old, sep, new = value.partition("=")
        target = new if sep else old
        if not target or any(c.isspace() for c in target) or (sep and not old):
            raise SpecError(f"{where}: {raw!r} is not NEW or OLD=NEW (an image reference)")
        if sep:
            mappings.append((old, new))
        elif everything is not None:
            raise SpecError(
                f"{where}: two plain replacements ({everything!r} and {value!r}); "
                "give one NEW, or OLD=NEW mappings"
            )
        else:
            everything = value
    return ImageOverride(everything, tuple(mappings))


def parametrize_id(value: Any) -> str | None:
    """A stable id for a sandbox spec used as a parametrize value (``python-3.12-slim``).

    Only dicts of spec fields and ``SandboxSpec`` objects get one; anything else keeps pytest's
    default.  The id depends only on the value, so every xdist worker computes the same one.
    """
    from .spec import FIELDS, SandboxSpec

    if isinstance(value, SandboxSpec):
        fields: Mapping[str, Any] = {
            k: v
            for k, v in value.as_fields().items()
            if v != SandboxSpec.__dataclass_fields__[k].default
        }
    elif isinstance(value, Mapping) and value and all(k in FIELDS for k in value):
        fields = value
    else:
        return None
    parts = []
    image = fields.get("image")
    if isinstance(image, str):
        parts.append(image)
    for key in sorted(fields):
        if key in ("image", "daemons", "secrets") or not isinstance(
            fields[key], (str, int, float, Mapping)
        ):
            continue
        val = fields[key]
        if isinstance(val, Mapping):
            val = ",".join(f"{k}={v}" for k, v in sorted(val.items()))
        if val in ("", None):
            continue
        parts.append(f"{key}={val}")
    if not parts:
        return None
    return re.sub(r"[^A-Za-z0-9_.:=,/@+-]", "_", "-".join(parts))[:80]
