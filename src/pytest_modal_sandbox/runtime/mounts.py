"""The bubblewrap command line for one sandbox (pure: easy to test, easy to read).

Host mode (no ``rootfs``): the host root read-only, private tmpfs on /tmp, /run and /var/tmp,
and the workdir a per-sandbox writable host directory bound over its path.  A workdir whose
path does not exist on the host needs a mount point that the read-only root cannot provide;
then its deepest existing ancestor is "materialised": a tmpfs in its place holding read-only
binds of each of its entries (so it looks the same) plus the new directory.

Rootfs mode: ``/`` is a private writable copy or overlay of the image root (prepared by the
runtime or the keeper), so every path is writable and the workdir keeps the image's content.
In build mode ``/`` is the image root itself and, with ``private_tmp=False`` (the image has a
``/tmp``), ``/tmp`` is kept, as ``docker build`` keeps what a ``RUN`` step leaves there.

``share_net`` (builds) leaves out ``--unshare-net``: the sandbox uses the host's network.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence

__all__ = ["TMPFS_DIRS", "bwrap_argv", "hosts_file", "resolve_in_root"]

TMPFS_DIRS = ("/tmp", "/run", "/var/tmp")
INFO_FD = 3


def hosts_file(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _materialise(directory: str, listdir: Callable[[str], Sequence[str]]) -> list[str]:
    """Replace host ``directory`` by a tmpfs that shows the same entries (read-only binds)."""
    args = [] if directory == "/" else ["--tmpfs", directory]
    for name in sorted(listdir(directory)):
        path = posixpath.join(directory, name)
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    return args


def bwrap_argv(
    *,
    bwrap: str,
    command: Sequence[str],
    hostname: str,
    workdir: str,
    user_namespace: bool,
    host_workdir: str | None,
    hosts_path: str | None,
    root: str | None,
    resolv_path: str | None = None,
    share_net: bool = False,
    private_tmp: bool = True,
    exists: Callable[[str], bool] = os.path.isdir,
    listdir: Callable[[str], Sequence[str]] = os.listdir,
) -> list[str]:
    """The full bwrap argv; ``root`` None means the host root read-only.

    ``host_workdir`` is the writable host directory to bind at ``workdir`` (host mode only);
    ``hosts_path`` and ``resolv_path`` are files bound at /etc/hosts and /etc/resolv.conf
    (read-only over the host's root; writable in a private root).
    """
    argv = [bwrap]
    if user_namespace:
        argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
    if not share_net:
        argv += ["--unshare-net"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--hostname", hostname, "--die-with-parent", "--info-fd", str(INFO_FD)]
    if root is not None:
        argv += ["--bind", root, "/", "--proc", "/proc", "--dev", "/dev"]
        if private_tmp:
            argv += ["--tmpfs", "/tmp"]
        if hosts_path is not None:  # writable, like Docker's
            argv += ["--bind", hosts_path, "/etc/hosts"]
        if resolv_path is not None:  # the host's own (share_net) is never writable
            argv += ["--ro-bind" if share_net else "--bind", resolv_path, "/etc/resolv.conf"]
        if workdir != "/":
            argv += ["--dir", workdir]
    else:
        materialise = None
        if host_workdir is not None and workdir != "/":
            writable = any(_under(workdir, t) for t in (*TMPFS_DIRS, "/dev"))
            if not writable and not exists(workdir):
                parent = posixpath.dirname(workdir)
                while not exists(parent):
                    parent = posixpath.dirname(parent)
                materialise = parent
        if materialise == "/":
            argv += _materialise("/", listdir)
        else:
            argv += ["--ro-bind", "/", "/"]
            if materialise is not None:
                argv += _materialise(materialise, listdir)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for tmp in TMPFS_DIRS:
            if exists(tmp) or (materialise == "/" and posixpath.dirname(tmp) == "/"):
                argv += ["--tmpfs", tmp]
        if hosts_path is not None:
            argv += ["--ro-bind", hosts_path, "/etc/hosts"]
        if host_workdir is not None and workdir != "/":
            argv += ["--bind", host_workdir, workdir]
    argv += ["--chdir", workdir, "--", *command]
    return argv


def resolve_in_root(root: str, path: str, *, max_links: int = 40) -> str:
    """``path`` as seen by a process whose root is ``root``, resolved to a host path.

    Symlinks are followed inside ``root`` (an absolute target restarts at ``root``, ``..``
    never climbs above it), as the kernel would do for a process chrooted there.
    """
    pending = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = posixpath.join(root, *resolved, part)
        if os.path.islink(candidate):
            links += 1
            if links > max_links:
                raise OSError(40, "Too many levels of symbolic links", path)  # ELOOP
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p and p != "."] + pending
        else:
            resolved.append(part)
    return posixpath.join(root, *resolved) if resolved else root


def merged_env(*layers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in layers:
        if layer:
            out.update(layer)
    return out
