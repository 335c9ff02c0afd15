"""Run a stdlib-only Python helper inside a sandbox's namespaces, with the *host's* interpreter.

``python -I -S enter.py KIND=FD [KIND=FD ...] -- SCRIPT [ARGS...]`` (built by
``LocalSandbox.helper_command``).  An image root may have no Python (or no shell, no ``cat``):
``nsenter -m`` followed by the host's ``python`` cannot work there, since the interpreter is
not in the sandbox's mount namespace.  So the order is reversed:

1. this process starts on the host and runs SCRIPT's module body (its imports load from the
   host's interpreter and stay loaded);
2. it ``setns(2)``es into the namespaces whose fds it inherited (``user`` first, so that it
   has the rights to join the others) and changes to the sandbox's ``/``;
3. it calls SCRIPT's ``main(args) -> int`` and exits with that code.

SCRIPT must import everything it needs at module level (nothing is importable afterwards) and
must not start threads before ``main`` (``setns`` into a mount namespace needs a single-threaded
process).  Never imports the package.
"""

from __future__ import annotations

import ctypes
import os
import sys

ORDER = ("user", "mnt", "net", "uts", "ipc", "pid")  # user first: it grants the rights
FLAGS = {
    "user": 0x10000000,
    "mnt": 0x00020000,
    "net": 0x40000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "pid": 0x20000000,
}


def _parse(argv: list[str]) -> tuple[dict[str, int], str, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: enter.py KIND=FD ... -- SCRIPT [ARGS...]")
    split = argv.index("--")
    fds: dict[str, int] = {}
    for item in argv[:split]:
        kind, _, fd = item.partition("=")
        if kind not in FLAGS or not fd.isdigit():
            raise SystemExit(f"enter.py: bad namespace argument {item!r}")
        fds[kind] = int(fd)
    rest = argv[split + 1 :]
    if not rest:
        raise SystemExit("enter.py: no script given")
    return fds, rest[0], rest[1:]


def enter(fds: dict[str, int]) -> None:
    """setns into each namespace (user first), close the fds, and go to the new ``/``."""
    libc = ctypes.CDLL(None, use_errno=True)
    for kind in sorted(fds, key=ORDER.index):
        if libc.setns(fds[kind], FLAGS[kind]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({kind}): {os.strerror(err)}")
        os.close(fds[kind])
    os.chdir("/")


def main() -> None:
    fds, script, args = _parse(sys.argv[1:])
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    module: dict[str, object] = {"__name__": "__sandbox_helper__", "__file__": script}
    exec(code, module)  # the helper's imports happen here, on the host
    helper_main = module.get("main")
    if not callable(helper_main):
        raise SystemExit(f"enter.py: {script} has no main(args)")
    try:
        enter(fds)
    except OSError as exc:
        print(f"cannot enter the sandbox: {exc}", file=sys.stderr)
        raise SystemExit(125) from None
    sys.exit(helper_main(args))


if __name__ == "__main__":
    main()
