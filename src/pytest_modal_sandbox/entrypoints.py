"""``Daemon.from_image``: the image's own ENTRYPOINT + CMD as a daemon, resolved at start.

A spec holds ``Daemon.from_image(name, args=...)`` without a command; :func:`resolve` turns it
into an ordinary daemon just before the sandbox is created, with the config the backend reads
for the image it would run (:class:`~.backends.protocol.ImageConfigs`), by Docker's rules
(:func:`~.images.command.image_command`):

- argv: ENTRYPOINT + CMD (``args`` replace CMD), run with ``exec``, never split or re-quoted;
- workdir: the image's ``WORKDIR`` (else ``/``);
- env: the image's env fills in what the sandbox's environment does not set already (so the
  spec's ``env`` and secrets win, as ``docker run -e`` does), the daemon's ``env`` on top.

The image's ``USER`` is not applied: sandboxes run as root on Modal, and so here (an
entrypoint that drops privileges, as ``docker-entrypoint.sh`` scripts do, still does).
"""

from __future__ import annotations

import re

from .backends.protocol import Backend, ImageConfigs
from .errors import SpecError
from .images.command import image_command
from .spec import Daemon, SandboxSpec, shell_quote

__all__ = ["needs_image_config", "resolve"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # what sh can export


def needs_image_config(spec: SandboxSpec) -> bool:
    return any(d.entrypoint for d in spec.daemons)


def resolve(spec: SandboxSpec, backend: Backend) -> SandboxSpec:
    """``spec`` with every ``Daemon.from_image`` replaced by the command it stands for."""
    if not needs_image_config(spec):
        return spec
    names = ", ".join(repr(d.name) for d in spec.daemons if d.entrypoint)
    if not isinstance(backend, ImageConfigs):
        raise SpecError(
            f"daemons {names}: Daemon.from_image is not supported by the {backend.name} backend"
        )
    try:
        config = backend.image_config(spec.image)
    except SpecError as exc:
        raise SpecError(f"Daemon.from_image ({names}): {exc}") from None
    daemons = []
    for i, daemon in enumerate(spec.daemons):
        if not daemon.entrypoint:
            daemons.append(daemon)
            continue
        try:
            command = image_command(config, args=daemon.args, env=daemon.env)
        except SpecError as exc:
            raise SpecError(f"daemons[{i}] ({daemon.name}): Daemon.from_image: {exc}") from None
        forced = set(daemon.env)
        lines = [
            f'[ -n "${{{key}+x}}" ] || export {key}={shell_quote(value)}'
            for key, value in command.env.items()
            if key not in forced and _NAME.match(key)
        ]
        lines.append("exec " + " ".join(shell_quote(a) for a in command.argv))
        daemons.append(
            Daemon(
                daemon.name,
                "\n".join(lines),
                ready=daemon.ready,
                env=daemon.env,
                workdir=command.workdir,
                restart=daemon.restart,
            )
        )
    return spec.replace(daemons=daemons)
