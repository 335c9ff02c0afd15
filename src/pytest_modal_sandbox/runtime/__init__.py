"""The local runtime: Modal-like sandboxes on this Linux machine, built on bubblewrap.

pytest-free.  The plugin's ``local`` backend and the Modal emulator are both built on it::

    rt = LocalRuntime()
    sb = rt.create(SandboxConfig(ports=[8000]))
    sb.exec(["echo", "hi"]).stdout        # b"hi\\n"
    host, port = sb.tunnel(8000)
    sb.terminate(wait=True)

Every sandbox is walled in alike, also when the runtime runs as root: user namespaces that own
nothing of the sandbox's, no new namespaces, no_new_privs, a seccomp denylist, a root of its own
(``userns.py``, ``hostview.py``, ``seccomp.py``, ``spawner.py``; docs/reference/local-walls.md).

Seen from the host, needing nothing inside the image: ``sb.listening_ports()`` (its TCP
listeners), ``sb.helper_command(script)`` (a stdlib-only Python script run in its mount
namespace with the host's interpreter), ``sb.init_pid`` and ``sb.open_namespaces()``.  Image
builds use ``SandboxConfig(rootfs=..., rootfs_writable=True, network=True)``: the root is
changed in place, with the host's network.  Spawn the argv of ``exec_command`` with
:func:`spawn_exec` (the walls a thread passes on) and stop an exec started that way or with
``popen`` with :func:`kill_exec`.  ``sb.wait()`` returns once the sandbox has ended and
its keeper has cleaned up.
"""

from .config import DEFAULT_ENV, ExecOutcome, ExitStatus, SandboxConfig
from .errors import InvalidArgument, InvalidConfig, NameTaken, RuntimeUnavailable, SandboxNotFound
from .execs import kill_exec
from .hostaddr import bind_pair, from_this_machine, peer_host
from .local import LocalRuntime
from .sandbox import LocalSandbox
from .spawner import spawn as spawn_exec

__all__ = [
    "DEFAULT_ENV",
    "ExecOutcome",
    "ExitStatus",
    "InvalidArgument",
    "InvalidConfig",
    "LocalRuntime",
    "LocalSandbox",
    "NameTaken",
    "RuntimeUnavailable",
    "SandboxConfig",
    "SandboxNotFound",
    "bind_pair",
    "from_this_machine",
    "kill_exec",
    "peer_host",
    "spawn_exec",
]
