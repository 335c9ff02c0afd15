"""The bubblewrap command line for one sandbox (pure: easy to test, easy to read).

The sandbox's root is prepared by the keeper before bwrap runs (``hostview.py``); bwrap binds
it at ``/`` and adds what only a process inside the new namespaces can mount: ``/proc`` (with
the host-controlling parts read-only or masked, as Docker does: ``/proc/sys``,
``/proc/sysrq-trigger``... since root inside is uid 0 outside, the kernel's uid checks on those
files would pass) and ``/dev`` (a tmpfs with null, zero, random, tty..., and its own devpts).

* ``private`` root (root's host-image view, an image root's overlay or copy, a build's root
  itself): bound read-write; ``/etc/hosts`` and ``/etc/resolv.conf`` of an image root are
  files in the state dir; an image sandbox gets a fresh ``/tmp`` unless ``private_tmp`` is off
  (builds keep what a ``RUN`` step leaves there, as ``docker build`` does).
* ``readonly`` root (host-image mode not as root): the keeper's read-only view of the host,
  private tmpfs on /tmp, /run and /var/tmp, and the workdir a per-sandbox writable host
  directory bound over its path.  A workdir whose path does not exist in the view needs a
  mount point that the read-only root cannot provide; then its deepest existing ancestor is
  "materialised": a tmpfs in its place holding read-only binds of each of its entries (so it
  looks the same) plus the new directory.

User namespaces: ``pair`` (root): bwrap starts in U1 and moves the sandbox into U2
(``--userns2``, see ``userns.py``); ``own`` (anyone else): bwrap nests a new one in the
keeper's.
``share_net`` (builds) leaves out ``--unshare-net``: the sandbox uses the host's network.
``own_net=False``: the sandbox runs in the keeper's network namespace (made by the keeper,
as root, for egress).  ``block`` (egress, ``egress.py``) holds the command until the keeper
has attached the network: ``--block-fd``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "BLOCK_FD",
    "INFO_FD",
    "PROC_MASKED",
    "PROC_READONLY",
    "SECCOMP_FD",
    "TMPFS_DIRS",
    "USERNS2_FD",
    "bwrap_argv",
    "hosts_file",
    "proc_args",
    "resolve_in_root",
]

TMPFS_DIRS = ("/tmp", "/run", "/var/tmp")
INFO_FD = 3
USERNS2_FD = 4
SECCOMP_FD = 5
BLOCK_FD = 6
PROC_READONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
# Files: /dev/null over them; directories: an empty read-only tmpfs.  (Docker also masks
# kcore, which needs CAP_SYS_RAWIO outside, and keys, sched_debug, latency_stats and
# timer_stats, which show nothing an unprivileged user of the host could not read.)
PROC_MASKED = ("acpi", "asound", "kpagecgroup", "kpagecount", "kpageflags", "scsi", "timer_list")


def hosts_file(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _materialise(directory: str, source: str, listdir: Callable[[str], Sequence[str]]) -> list[str]:
    """Replace ``directory`` by a tmpfs that shows the same entries (read-only binds of the
    view ``source``'s)."""
    args = [] if directory == "/" else ["--tmpfs", directory]
    for name in sorted(listdir(directory)):
        path = posixpath.join(directory, name)
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", source + path, path]
    return args


def proc_args(exists: Callable[[str], bool] = os.path.lexists) -> list[str]:
    """``/proc`` as Docker leaves it: the host-wide knobs read-only, the kernel's memory and
    keys masked (entries this kernel lacks are skipped)."""
    args = ["--proc", "/proc"]
    for name in PROC_READONLY:
        path = f"/proc/{name}"
        if exists(path):
            args += ["--ro-bind", path, path]
    for name in PROC_MASKED:
        path = f"/proc/{name}"
        if not exists(path):
            continue
        if os.path.isdir(path):
            args += ["--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    return args


def bwrap_argv(
    *,
    bwrap: str,
    command: Sequence[str],
    hostname: str,
    workdir: str,
    userns: str,
    root: str,
    readonly_root: bool = False,
    host_workdir: str | None = None,
    hosts_path: str | None = None,
    resolv_path: str | None = None,
    share_net: bool = False,
    own_net: bool = True,
    private_tmp: bool = True,
    seccomp: bool = True,
    block: bool = False,
    exists: Callable[[str], bool] = os.path.isdir,
    listdir: Callable[[str], Sequence[str]] = os.listdir,
    binds: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The full bwrap argv.  ``root`` is the directory to make ``/`` (the keeper's view);
    ``readonly_root`` marks the non-root host view, with ``host_workdir`` the writable host
    directory to bind at ``workdir``; ``exists``/``listdir`` describe that view.
    ``hosts_path`` and ``resolv_path`` are files bound at /etc/hosts and /etc/resolv.conf;
    ``binds`` are ``(host path, sandbox path)`` pairs bound writable last (the mounts' copies)."""
    argv = [bwrap]
    if userns == "pair":
        argv += ["--userns2", str(USERNS2_FD)]  # bwrap starts in U1 (userns.Launcher)
    else:
        argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
    if own_net and not share_net:
        argv += ["--unshare-net"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"]
    argv += ["--hostname", hostname, "--die-with-parent", "--new-session"]
    argv += ["--info-fd", str(INFO_FD)]
    if seccomp:
        argv += ["--seccomp", str(SECCOMP_FD)]
    if block:
        argv += ["--block-fd", str(BLOCK_FD)]
    if not readonly_root:
        argv += ["--bind", root, "/", "--dev", "/dev", *proc_args()]
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
            argv += _materialise("/", root, listdir)
        else:
            argv += ["--ro-bind", root, "/"]
            if materialise is not None:
                argv += _materialise(materialise, root, listdir)
        argv += ["--dev", "/dev", *proc_args()]
        for tmp in TMPFS_DIRS:
            if exists(tmp) or (materialise == "/" and posixpath.dirname(tmp) == "/"):
                argv += ["--tmpfs", tmp]
        if hosts_path is not None:
            argv += ["--ro-bind", hosts_path, "/etc/hosts"]
        if host_workdir is not None and workdir != "/":
            argv += ["--bind", host_workdir, workdir]
    for source, target in binds:
        argv += ["--bind", source, target]
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
