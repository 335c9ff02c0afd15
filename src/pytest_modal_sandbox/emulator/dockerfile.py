"""The Dockerfile lines of one ``modal.Image`` layer, parsed into the steps the emulator runs.

The client sends each layer as ``dockerfile_commands`` (``FROM base``, ``RUN ...``, ``ENV
K=V``...), one instruction per string.  Supported:

* ``FROM <ref>`` (a registry image) or ``FROM <tag>`` naming one of the layer's base images;
* ``RUN`` in shell form (``/bin/sh -c``, or the ``SHELL`` set earlier) and exec form
  (``RUN ["prog", "arg"]``);
* ``ENV K=V ...`` / ``ENV K V``, ``ARG K[=V]`` (build-time only), ``WORKDIR``, with ``$VAR``,
  ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}`` expanded as Docker does;
* ``COPY``/``ADD`` of the layer's context files (``pip_install_from_requirements``,
  ``dockerfile_commands(context_files=...)``);
* ``CMD``, ``ENTRYPOINT``, ``LABEL``, ``EXPOSE``, ``VOLUME``, ``USER``, ``STOPSIGNAL``,
  ``HEALTHCHECK``, ``MAINTAINER``, ``ONBUILD`` are accepted and have no effect (as on Modal,
  a sandbox's command is explicit and it runs as root).

Anything else is a :class:`DockerfileError` naming the line, which fails the build.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Arg",
    "Copy",
    "DockerfileError",
    "Env",
    "From",
    "Ignored",
    "Run",
    "Shell",
    "Step",
    "Workdir",
    "expand",
    "parse",
]

NO_EFFECT = frozenset(
    {
        "CMD",
        "ENTRYPOINT",
        "LABEL",
        "EXPOSE",
        "VOLUME",
        "USER",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "MAINTAINER",
        "ONBUILD",
    }
)


class DockerfileError(ValueError):
    """A Dockerfile line the emulator cannot build; the message names the line."""


@dataclass(frozen=True)
class From:
    ref: str  # a registry reference, or a base image's tag (``is_base``)
    is_base: bool


@dataclass(frozen=True)
class Run:
    text: str  # the line as written (for the log)
    argv: tuple[str, ...] | None  # exec form; None = shell form (``command`` through SHELL)
    command: str


@dataclass(frozen=True)
class Env:
    pairs: tuple[tuple[str, str], ...]  # unexpanded


@dataclass(frozen=True)
class Arg:
    name: str
    default: str | None  # unexpanded


@dataclass(frozen=True)
class Workdir:
    path: str  # unexpanded


@dataclass(frozen=True)
class Copy:
    text: str
    sources: tuple[str, ...]
    dest: str  # unexpanded


@dataclass(frozen=True)
class Shell:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Ignored:
    instruction: str
    text: str


Step = From | Run | Env | Arg | Workdir | Copy | Shell | Ignored

_VAR = re.compile(
    r"\\\$"  # an escaped dollar
    r"|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}"  # ${V}, ${V:-w}, ${V:+w}
    r"|([A-Za-z_][A-Za-z0-9_]*))"  # $V
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Docker's variable substitution: ``$V``, ``${V}``, ``${V:-word}``, ``${V:+word}``;
    ``\\$`` is a literal dollar; unknown variables are empty."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(one, text)


def _json_list(rest: str) -> tuple[str, ...] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _words(line: str, rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError as exc:
        raise DockerfileError(f"{line!r}: {exc}") from None


def _env(line: str, rest: str) -> Env:
    words = _words(line, rest)
    if not words:
        raise DockerfileError(f"{line!r}: ENV needs KEY=VALUE")
    if "=" not in words[0]:  # legacy form: ENV KEY the rest of the line
        key, _, value = rest.strip().partition(" ")
        if not _NAME.match(key):
            raise DockerfileError(f"{line!r}: {key!r} is not a variable name")
        return Env(((key, value.strip()),))
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not _NAME.match(key):
            raise DockerfileError(f"{line!r}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return Env(tuple(pairs))


def _parse_line(line: str, bases: Sequence[str]) -> Step:
    stripped = line.strip()
    instruction, _, rest = stripped.partition(" ")
    if not instruction:
        raise DockerfileError(f"{line!r}: empty Dockerfile line")
    word = instruction.upper()
    rest = rest.strip()
    if word == "FROM":
        parts = rest.split()
        if not parts:
            raise DockerfileError(f"{line!r}: FROM needs an image")
        return From(parts[0], parts[0] in bases)
    if word == "RUN":
        if not rest:
            raise DockerfileError(f"{line!r}: RUN needs a command")
        argv = _json_list(rest)
        return Run(stripped, argv, rest)
    if word == "ENV":
        return _env(line, rest)
    if word == "ARG":
        name, sep, default = rest.partition("=")
        if not _NAME.match(name.strip()):
            raise DockerfileError(f"{line!r}: {name!r} is not a variable name")
        return Arg(name.strip(), default if sep else None)
    if word == "WORKDIR":
        words = _words(line, rest)
        if len(words) != 1:
            raise DockerfileError(f"{line!r}: WORKDIR needs one path")
        return Workdir(words[0])
    if word in ("COPY", "ADD"):
        words = list(_json_list(rest) or _words(line, rest))
        words = [w for w in words if not w.startswith("--")]
        if len(words) < 2:
            raise DockerfileError(f"{line!r}: {word} needs a source and a destination")
        return Copy(stripped, tuple(words[:-1]), words[-1])
    if word == "SHELL":
        argv = _json_list(rest)
        if argv is None:
            raise DockerfileError(f'{line!r}: SHELL needs a JSON array, e.g. ["/bin/sh", "-c"]')
        return Shell(argv)
    if word in NO_EFFECT:
        return Ignored(word, stripped)
    raise DockerfileError(f"{line!r}: the emulator does not support the {word} instruction")


def parse(commands: Sequence[str], bases: Sequence[str] = ()) -> list[Step]:
    """The steps of one layer; ``bases`` are the tags of its base images (``FROM base``)."""
    steps = [_parse_line(line, bases) for line in commands if line.strip()]
    froms = [s for s in steps if isinstance(s, From)]
    if len(froms) > 1:
        raise DockerfileError("a layer may have one FROM line (multi-stage builds are not run)")
    if froms and not isinstance(steps[0], From):
        raise DockerfileError("FROM must be the first line of a layer")
    return steps
