"""A sandbox started ahead of its spec (stdlib only: the keeper loads this file directly).

Most of a sandbox's start is bubblewrap setting up its root: the namespaces, the mounts, the
masks over ``/proc``, about ten milliseconds that do not depend on the command, the
environment or the sandbox's name.  Once two launches in a row had the same :func:`shape`,
the keeper server's next spare keeper (``spare.py``, ``keeper.py``) starts a sandbox shaped
like the last one (the *template*): the same root view, the same bwrap options, its files on
a tmpfs over the state dir in its own mount namespace (nothing of it shows on the host), a
stand-in host name and, as the entrypoint, a trampoline (bash, from the sandbox's own root)
that waits on a pipe.  When a launch of that shape comes, the keeper sets the host name,
writes ``/etc/hosts``, routes the allowlist, moves the view to the sandbox's state dir, links
the unnamed output files there, and hands the trampoline the environment and command, which
it ``exec``s through ``env -i``: PID 2 becomes the entrypoint with exactly that environment,
as bwrap would have made it.  A launch of another shape finds the warm sandbox discarded and
starts as before.

Only what a shape pins down is reused: the root view as the creator planned it (the hidden
paths, the layers, the host's mounts, all compared), the walls, the network profile, the
state dir.  The command, environment, host name, ``/etc/hosts``, routes, timeouts and owner
are the launch's own.  Host-image sandboxes as root only (an image root may lack bash).
"""

from __future__ import annotations

import hashlib
import marshal
import os

TYPE_CHECKING = False  # not `typing`: importing it costs the keeper milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SPEC_FD",
    "SPEC_MAX",
    "STANDIN_HOSTNAME",
    "encode_spec",
    "hostname",
    "hosts_data",
    "sandbox_dir",
    "shape",
    "shaped_like",
    "trampoline",
]

SPEC_FD = 7  # the trampoline's end of the spec pipe (bwrap's own descriptors are 3-6)
SPEC_MAX = 16384  # within a pipe's buffer: written at once; bash reads it a byte at a time
STANDIN_HOSTNAME = "pms-warm"
BASH = ("/bin/bash", "/usr/bin/bash")
ENV = "/usr/bin/env"
# NUL-terminated records "NAME=value"... then the command; `env -i` execs the command with
# exactly those variables (it takes leading NAME=value operands as the environment).
SCRIPT = (
    f'while IFS= read -r -d "" x <&{SPEC_FD}; do a+=("$x"); done; '
    f'exec {SPEC_FD}<&-; exec {ENV} -i -- "${{a[@]}}"'
)
# Keys of a launch that are the sandbox's own, not its shape.
OWN = frozenset(
    {
        "env",
        "timeout",
        "idle_timeout",
        "owner_lock",
        "ready_fd",
        "owner_fd",
        "stdin_fd",
        "started_fd",
    }
)


def sandbox_dir(launch: dict[str, Any]) -> str:
    return os.path.dirname(str(launch["result"]))


def _command_start(argv: list[str]) -> int:
    return argv.index("--") + 1


def _hosts_entry(view: dict[str, Any]) -> list[Any] | None:
    """The ``/etc/hosts`` file the view writes into its root layer."""
    for entry in view["layers"][0]["entries"]:
        if entry[0] == "file" and entry[1] == "etc/hosts":
            return entry  # type: ignore[no-any-return]
    return None


def _replace(value: Any, old: str, new: str) -> Any:
    """``value`` with ``old`` replaced by ``new`` in every string in it."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace(v, old, new) for v in value)
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    return value


def _warmable(launch: dict[str, Any]) -> bool:
    view = launch.get("view")
    return (
        launch["walls"]["userns"] == "pair"
        and isinstance(view, dict)
        and view.get("kind") == "overlay"
        and view["layers"][0]["lower"] == "/"  # the host's root (hostview.py), not an image
        and _hosts_entry(view) is not None
        and not launch.get("mount_overlays")
        and launch.get("stdin_fd") is None
        and "--hostname" in launch["bwrap_argv"]
    )


def _shaped(launch: dict[str, Any], directory: str, hostname: str) -> dict[str, Any]:
    """``launch`` in its sandbox directory's place ``directory``, named ``hostname``, with none
    of what is its own (the command, the environment, the routes, ``OWN``)."""
    argv: list[str] = launch["bwrap_argv"]
    head = argv[: _command_start(argv)]
    head[head.index("--hostname") + 1] = hostname
    out = {k: v for k, v in launch.items() if k not in OWN and k != "bwrap_argv"}
    out["bwrap_argv"] = head
    if out.get("net"):
        out["net"] = {k: v for k, v in out["net"].items() if k != "routes"}
    shaped: dict[str, Any] = _replace(out, sandbox_dir(launch), directory)  # a deep copy
    hosts = _hosts_entry(shaped["view"])
    assert hosts is not None
    hosts[5] = b""  # the sandbox's name is in it: written when the sandbox is handed over
    return shaped


def shape(launch: dict[str, Any]) -> str | None:
    """What a warm sandbox must share with ``launch`` to serve it, as a digest; None if a
    sandbox like it cannot be started ahead."""
    if not _warmable(launch):
        return None
    # the sandbox's own directory, not the state dir: a warm sandbox serves its state dir only
    shaped = _shaped(launch, os.path.join(os.path.dirname(sandbox_dir(launch)), "\0"), "\0")
    return hashlib.sha256(marshal.dumps(shaped)).hexdigest()


def trampoline() -> list[str] | None:
    """The warm sandbox's entrypoint until its command comes; None without bash or env (the
    host's, which is the host-image sandbox's root)."""
    bash = next((path for path in BASH if os.access(path, os.X_OK)), None)
    if bash is None or not os.access(ENV, os.X_OK):
        return None
    return [bash, "--norc", "--noprofile", "-c", SCRIPT]


def shaped_like(template: dict[str, Any], directory: str) -> dict[str, Any]:
    """The launch of a warm sandbox shaped like ``template``, in ``directory``: its command the
    trampoline (which reads its spec on ``SPEC_FD``), with no owner, no timeout, no routes."""
    command = trampoline()
    assert command is not None
    launch = _shaped(template, directory, STANDIN_HOSTNAME)
    launch["bwrap_argv"] = launch["bwrap_argv"] + command
    launch["env"] = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    launch["timeout"] = float("inf")
    launch["idle_timeout"] = None
    launch["owner_lock"] = None
    launch["ready_fd"] = launch["owner_fd"] = None
    if launch.get("net"):
        launch["net"] = {**launch["net"], "routes": []}  # the sandbox's own come with it
    launch["stdin_fd"] = None
    launch["warm"] = True
    return launch


def encode_spec(launch: dict[str, Any]) -> bytes | None:
    """What the trampoline reads: the environment (with ``PWD``, as bwrap sets it) and the
    command of ``launch``; None if the trampoline cannot pass them on exactly (a command
    whose name has ``=`` would be taken for a variable; bash keeps 0x01 and 0x7f bytes for
    itself), or if it is longer than ``SPEC_MAX``."""
    argv: list[str] = launch["bwrap_argv"]
    command = argv[_command_start(argv) :]
    workdir = argv[argv.index("--chdir") + 1] if "--chdir" in argv else "/"
    env = {**launch["env"], "PWD": workdir}
    items = [f"{k}={v}" for k, v in env.items()] + command
    if not command or "=" in command[0]:
        return None
    data = b"".join(item.encode("utf-8", "surrogateescape") + b"\0" for item in items)
    if b"\x01" in data or b"\x7f" in data or len(data) > SPEC_MAX:
        return None
    return data


def hosts_data(launch: dict[str, Any]) -> bytes:
    entry = _hosts_entry(launch["view"])
    assert entry is not None
    return bytes(entry[5])


def hostname(launch: dict[str, Any]) -> str:
    argv: list[str] = launch["bwrap_argv"]
    return argv[argv.index("--hostname") + 1]
