"""The local runtime: Modal-like sandboxes on this Linux machine, built on bubblewrap.

pytest-free.  The plugin's ``local`` backend and the Modal emulator are both built on it::

    rt = LocalRuntime()
    sb = rt.create(SandboxConfig(ports=[8000]))
    sb.exec(["echo", "hi"]).stdout        # b"hi\\n"
    host, port = sb.tunnel(8000)
    sb.terminate(wait=True)
"""

from .config import DEFAULT_ENV, ExecOutcome, ExitStatus, SandboxConfig
from .errors import InvalidArgument, InvalidConfig, NameTaken, RuntimeUnavailable, SandboxNotFound
from .execs import kill_exec
from .local import LocalRuntime
from .sandbox import LocalSandbox

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
    "kill_exec",
]
