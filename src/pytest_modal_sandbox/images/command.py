"""What ``docker run IMAGE [args]`` runs: argv, env, workdir and user from an image's config.

Pure (no I/O): :func:`image_command` applies Docker's rules to an
:class:`~.manifest.ImageConfig` (from :func:`~.config.image_config`):

- argv is ENTRYPOINT + CMD; ``args`` replace CMD (even an empty list), never ENTRYPOINT.
  Both are used exactly as the config stores them: a Dockerfile's shell form is already
  ``["/bin/sh", "-c", "..."]`` there, so nothing is split or quoted here;
- env is the image's env, then ``PATH`` set to Docker's default if the image has none, then the
  caller's ``env`` on top (the caller wins);
- workdir is the image's ``WORKDIR``, else ``/``; user is the image's ``USER`` (None: root).

An image with neither ENTRYPOINT nor CMD has nothing to run: that is a :class:`SpecError`
that says to give the daemon a command instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ..errors import SpecError
from .manifest import ImageConfig

__all__ = ["DEFAULT_PATH", "ImageCommand", "image_command"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # as dockerd


@dataclasses.dataclass(frozen=True)
class ImageCommand:
    """A daemon's process as ``docker run`` would start it."""

    argv: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str | None


def _image(config: ImageConfig) -> str:
    return f"image {config.reference}" if config.reference else "the image"


def image_command(
    config: ImageConfig,
    *,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ImageCommand:
    """The argv, env, workdir and user ``docker run IMAGE [args]`` would use for ``config``."""
    if isinstance(args, str) or (args is not None and not all(isinstance(a, str) for a in args)):
        raise SpecError(
            f"args must be a list of strings (argv words, as after 'docker run IMAGE'), not "
            f"{args!r}; e.g. args=['--port', '7000'] (shlex.split() splits a command line)"
        )
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
            raise SpecError(
                f"env must map variable names to strings; {key!r}: {value!r} is not that"
            )
    argv = (*config.entrypoint, *(config.cmd if args is None else args))
    if not argv:
        why = (
            "has neither ENTRYPOINT nor CMD"
            if args is None
            else "has no ENTRYPOINT and args is empty"
        )
        raise SpecError(
            f"{_image(config)} {why}, so there is nothing to run: set a command: "
            "Daemon(name, command=...)"
        )
    merged = dict(config.env)
    merged.setdefault("PATH", DEFAULT_PATH)
    merged.update(env or {})
    return ImageCommand(argv=argv, env=merged, workdir=config.workdir or "/", user=config.user)
