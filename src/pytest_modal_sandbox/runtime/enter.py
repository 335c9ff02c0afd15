"""Run a stdlib-only Python helper inside a sandbox's namespaces, with the *host's* interpreter.

``python -I -S enter.py KIND=FD [KIND=FD ...] -- SCRIPT [ARGS...]`` (built by
``LocalSandbox.helper_command``).  An image root may have no Python (or no shell, no ``cat``):
``nsenter -m`` followed by the host's ``python`` cannot work there, since the interpreter is
not in the sandbox's mount namespace.  So the order is reversed:

1. this process starts on the host and runs SCRIPT's module body (its imports load from the
   host's interpreter and stay loaded);
2. it ``setns(2)``es into the namespaces whose fds it inherited and changes to the sandbox's
   ``/``.  As root it is given no ``user`` namespace: it joins the others with its own rights
   and stays outside the sandbox's user namespace, where the sandbox's root could reach it.
   Not as root it must join the user namespace first, to have the rights to join the others;
   like ``nsenter``, it tries the others first and the user namespace in between;
3. it calls SCRIPT's ``main(args) -> int`` and exits with that code.

SCRIPT must import everything it needs at module level (nothing is importable afterwards) and
must not start threads before ``main`` (``setns`` into a mount namespace needs a single-threaded
process).  Never imports the package.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # linux.py (stdlib only)
import linux  # type: ignore[import-not-found]

FLAGS = {
    "user": linux.CLONE_NEWUSER,
    "mnt": linux.CLONE_NEWNS,
    "net": linux.CLONE_NEWNET,
    "uts": linux.CLONE_NEWUTS,
    "ipc": linux.CLONE_NEWIPC,
    "pid": linux.CLONE_NEWPID,
    "cgroup": linux.CLONE_NEWCGROUP,
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
    """setns into each namespace, close the fds, and go to the new ``/``: the others first,
    then the user namespace, then whatever needed its rights."""
    pending = [kind for kind in fds if kind != "user"]
    for joining_user in (False, True):
        if joining_user and "user" in fds:
            linux.setns(fds["user"], FLAGS["user"])
        for kind in list(pending):
            try:
                linux.setns(fds[kind], FLAGS[kind])
            except PermissionError:
                if joining_user or "user" not in fds:
                    raise
                continue
            pending.remove(kind)
    for fd in fds.values():
        os.close(fd)
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
