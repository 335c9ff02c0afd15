"""A sandbox's root file system: the plan (made by the creating process) and its building
(done by the keeper, in a mount namespace of its own).  Stdlib only: the keeper loads it.

**Host-image mode as root** (a sandbox with no ``rootfs``): a private copy-on-write view of
this machine's root.  Each real file system mounted under ``/`` (``/`` itself, a separate
``/var`` or ``/opt``...) becomes an overlayfs layer whose upper directory lives in the
keeper's mount namespace, on a tmpfs mounted at the sandbox's ``ovl/`` state directory (fast
to fill and to drop, whatever file system the state dir is on), and the root itself is
mounted inside that tmpfs (``ovl/root``), so the whole view is one mount point there,
detached in one go; read-only ones (squashfs, a read-only ``/boot``) are bound as they are.
Writes anywhere land in the upper layers and vanish with the sandbox; the host's files are
never written.  Never a copy of the host's root.

What the sandbox must not see is written into the upper layers before the mount, so no mount
can be undone to reveal it: directories become empty (an *opaque* directory), files absent (a
*whiteout*).  :func:`hidden_paths` lists them: scratch (``/tmp``, ``/var/tmp``, ``/run``) and
home directories, the state and cache dirs of the plugin, credential stores; ``/etc/shadow``
and ``/etc/gshadow`` are kept with every password replaced by ``*``.  ``/proc``, ``/sys`` and
``/dev`` of the host are not part of the view (bwrap mounts the sandbox's own ``/proc`` and
``/dev``; ``/sys`` stays empty).

**Not as root** the kernel lets a user namespace neither overlay ``/`` (its locked mounts
would be revealed) nor write files of other owners, so the view is the host's root bound
read-only with each hidden path covered by an empty tmpfs or file (made read-only, in the
keeper's mount namespace: the sandbox cannot unmount them).  Only ``/tmp``, ``/run``,
``/var/tmp`` and the workdir are writable there (bwrap adds them).

**An image root** is one overlayfs layer (or a copy), see ``rootfs.py``.
"""

from __future__ import annotations

import os
import stat
import subprocess

try:
    from . import linux
except ImportError:  # loaded by the keeper as a plain module, beside linux.py
    import linux  # type: ignore[import-not-found,no-redef]

__all__ = [
    "CREDENTIAL_ENV",
    "SCRATCH",
    "SECRET_DIRS",
    "SECRET_FILES",
    "build",
    "build_mount_overlays",
    "hidden_paths",
    "host_layers",
    "masks_plan",
    "overlay_plan",
]

SCRATCH = ("/tmp", "/var/tmp", "/run")  # empty and writable, as in a fresh container
HOMES = ("/root", "/home", "/run/user")
SECRET_DIRS = (
    "/etc/ssl/private",
    "/etc/pki/tls/private",
    "/etc/letsencrypt",
    "/etc/NetworkManager/system-connections",
    "/etc/kubernetes",
    "/etc/rancher",
    "/etc/gitlab-runner",
    "/etc/buildkite-agent",
    "/etc/apt/auth.conf.d",
    "/etc/docker/certs.d",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/var/lib/rancher",
    "/var/lib/lxd",
    "/var/snap/lxd",
    "/var/lib/libvirt",
    "/var/lib/cloud",
    "/var/lib/sss",
    "/var/lib/private",
    "/var/lib/jenkins",
    "/var/lib/buildkite-agent",
    "/var/lib/gitlab-runner",
    "/var/backups",
)
SECRET_FILES = (
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/krb5.keytab",
    "/etc/ipsec.secrets",
    "/etc/ppp/chap-secrets",
    "/etc/ppp/pap-secrets",
    "/etc/apt/auth.conf",
    "/etc/docker/key.json",
    "/var/lib/systemd/credential.secret",
)
SSH_HOST_KEYS = "/etc/ssh"  # its ssh_host_*_key files (the private halves)
SANITISED = ("/etc/shadow", "/etc/gshadow")  # kept, each password replaced by "*"
# Environment variables naming a credential file or a per-user directory (hidden wherever it
# is, unless it is a system directory); KUBECONFIG is a list.
CREDENTIAL_ENV = (
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
    "PYTEST_MODAL_SANDBOX_STATE_DIR",
    "PYTEST_MODAL_SANDBOX_CACHE_DIR",
    "MODAL_CONFIG_PATH",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "KUBECONFIG",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "AZURE_CONFIG_DIR",
    "GH_CONFIG_DIR",
    "NETRC",
    "GIT_CONFIG_GLOBAL",
    "GNUPGHOME",
    "SSH_AUTH_SOCK",
    "PIP_CONFIG_FILE",
    "NPM_CONFIG_USERCONFIG",
    "CARGO_HOME",
    "HF_HOME",
)
# Never hidden, whatever an environment variable or a home directory says.
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/nix")
ESSENTIAL = (*SYSTEM, "/snap", "/etc", "/var/lib", "/var/cache", "/opt", "/srv", "/proc", "/dev")
REPLACED = ("/proc", "/sys", "/dev")  # not part of the view: bwrap mounts /proc and /dev
PSEUDO_FS = frozenset(
    {
        *("proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs"),
        *("tracefs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs"),
        *("binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs", "ramfs"),
        *("nfsd", "fuse"),
    }
)
DIR_ATTRS = (0o755, 0, 0)


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _may_hide(path: str) -> bool:
    """A per-user path may be hidden unless it is (or contains) a part of the system."""
    return (
        path.startswith("/")
        and not any(_under(essential, path) for essential in ESSENTIAL)
        and not any(_under(path, system) for system in SYSTEM)
    )


def _passwd_homes() -> list[str]:
    """Homes of root and of the accounts people use (uid >= 1000)."""
    import pwd

    homes = []
    for entry in pwd.getpwall():
        if entry.pw_uid == 0 or 1000 <= entry.pw_uid < 65534:
            homes.append(entry.pw_dir)
    for name in (os.environ.get("SUDO_USER"),):
        if name:
            try:
                homes.append(pwd.getpwnam(name).pw_dir)
            except KeyError:
                pass
    try:
        homes.append(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        pass
    return homes


def hidden_paths(state_dirs: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The paths a host-image sandbox must not see: ``(directories, files)``, resolved through
    symlinks, existing ones only."""
    personal = [*_passwd_homes(), *state_dirs]
    for name in CREDENTIAL_ENV:
        value = os.environ.get(name, "")
        personal += value.split(":") if name == "KUBECONFIG" else [value]
    dirs: list[str] = [*SCRATCH, *HOMES, *SECRET_DIRS]
    files: list[str] = list(SECRET_FILES)
    try:
        files += [
            f"{SSH_HOST_KEYS}/{name}"
            for name in os.listdir(SSH_HOST_KEYS)
            if name.startswith("ssh_host_") and name.endswith("_key")
        ]
    except OSError:
        pass
    for path in personal:
        path = os.path.normpath(path) if path.startswith("/") else ""
        if path and _may_hide(path):
            (dirs if os.path.isdir(path) else files).append(path)
    out_dirs: list[str] = []
    for path in dirs:
        real = os.path.realpath(path) if os.path.lexists(path) else ""
        if real and real != "/" and real not in out_dirs and os.path.isdir(real):
            out_dirs.append(real)
    out_files: list[str] = []
    for path in files:  # existing ones: one made later on the host shows (sandboxes are brief)
        real = os.path.realpath(path) if os.path.lexists(path) else ""
        if real and real not in out_files and not any(_under(real, d) for d in out_dirs):
            out_files.append(real)
    out_dirs = [d for d in out_dirs if not any(d != o and _under(d, o) for o in out_dirs)]
    return out_dirs, out_files


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    if "\\" not in field:
        return field
    out, i = "", 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out += chr(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def host_layers(mountinfo: str, excluded: list[str]) -> list[dict[str, object]]:
    """The host's mounts that form the view, parents first: ``/`` and every real file system
    below it outside ``excluded`` (and /proc, /sys, /dev); read-only ones as ``bind``."""
    top: dict[str, tuple[str, bool]] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, super_fields = left.split(), right.split()
        if not sep or len(fields) < 6 or not super_fields:
            continue
        point, fstype = _unescape(fields[4]), super_fields[0]
        options = fields[5].split(",") + (
            super_fields[2].split(",") if len(super_fields) > 2 else []
        )
        for covered in [p for p in top if _under(p, point)]:
            del top[covered]  # a later mount covers what was at or below its point
        top[point] = (fstype, "ro" in options)
    layers: list[dict[str, object]] = [
        {"lower": "/", "target": "/", "mode": "overlay", "entries": []}
    ]
    skip = [*REPLACED, *excluded]
    for point, (fstype, readonly) in top.items():
        if point == "/" or any(_under(point, s) for s in skip):
            continue
        if fstype in PSEUDO_FS or fstype.startswith("fuse."):
            continue
        mode = "bind" if readonly else "overlay"
        layers.append({"lower": point, "target": point, "mode": mode, "entries": []})
    layers.sort(key=lambda layer: str(layer["target"]).count("/") if layer["target"] != "/" else 0)
    return layers


def _attrs(path: str) -> tuple[int, int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return DIR_ATTRS
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _sanitised(path: str) -> bytes | None:
    """``path`` (a shadow-style file) with every password field replaced by ``*``."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        return None
    lines = []
    for line in text.splitlines():
        fields = line.split(b":")
        if len(fields) > 1:
            fields[1] = b"*"
        lines.append(b":".join(fields))
    return b"\n".join(lines) + b"\n" if lines else b""


class _Uppers:
    """The entries written into each layer's upper directory before it is mounted."""

    def __init__(self, layers: list[dict[str, object]]) -> None:
        self.layers = layers
        self.entries: list[dict[str, list[object]]] = [{} for _ in layers]

    def locate(self, path: str) -> tuple[int, str]:
        best = 0
        for index, layer in enumerate(self.layers):
            target = str(layer["target"])
            if _under(path, target) and len(target) > len(str(self.layers[best]["target"])):
                best = index
        target = str(self.layers[best]["target"])
        return best, path[len(target) :].strip("/") if target != "/" else path.strip("/")

    def _opaque_above(self, index: int, rel: str) -> bool:
        parts = rel.split("/")
        entries = self.entries[index]
        return any(
            entries.get("/".join(parts[:n]), [""])[0] == "opaque" for n in range(1, len(parts) + 1)
        )

    def _parents(self, index: int, rel: str) -> None:
        parts = rel.split("/")[:-1]
        lower = str(self.layers[index]["lower"])
        for n in range(1, len(parts) + 1):
            sub = "/".join(parts[:n])
            if sub not in self.entries[index]:
                self.entries[index][sub] = ["dir", sub, *_attrs(os.path.join(lower, sub))]

    def add(self, path: str, kind: str, data: bytes = b"", *, hide: bool = True) -> None:
        index, rel = self.locate(path)
        if self.layers[index]["mode"] != "overlay":
            return  # a read-only layer: nothing there can be changed (nor written to)
        if hide and self._opaque_above(index, rel):
            return  # already inside something empty
        self._parents(index, rel)
        attrs = _attrs(path) if os.path.lexists(path) else DIR_ATTRS
        if kind == "whiteout":
            self.entries[index][rel] = ["whiteout", rel]
        elif kind == "file":
            mode = attrs[0] if os.path.lexists(path) else 0o644
            self.entries[index][rel] = ["file", rel, mode, attrs[1], attrs[2], data]
        else:
            self.entries[index][rel] = [kind, rel, *attrs]


def overlay_plan(
    *,
    root: str,
    ovl: str,
    workdir: str,
    hosts: bytes,
    state_dirs: tuple[str, ...],
    mountinfo: str | None = None,
    resolv: bytes | None = None,
    snapshot: tuple[tuple[str, str], ...] = (),
) -> dict[str, object]:
    """Root only: the copy-on-write view of the host's root (see the module docstring);
    ``hosts`` (and ``resolv``, for a sandbox with its own network) replace the host's
    ``/etc/hosts`` (and ``/etc/resolv.conf``) in the view.

    ``snapshot`` (``(target, dir)`` pairs) seeds each layer's upper with a captured one: a
    copy of it, made by the keeper before the entries (overlayfs refuses a lower layer inside
    the host's ``/``, which is a lower layer here).  What the seed already has is left to it
    (a whiteout or an opaque directory there is what the snapshotted sandbox left, a ``/tmp``
    it filled), except the files written for every sandbox (its ``/etc/hosts``, sanitised
    shadow files).  The upper is thus the whole difference from the host, and a snapshot of
    such a sandbox is its upper alone."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    hidden_dirs, hidden_files = hidden_paths(state_dirs)
    wd = os.path.realpath(workdir) if workdir != "/" else None
    layers = host_layers(mountinfo, hidden_dirs + ([wd] if wd else []))
    uppers = _Uppers(layers)
    for path in hidden_dirs:
        uppers.add(path, "opaque")
    for path in hidden_files:
        uppers.add(path, "whiteout")
    for path in SANITISED:
        real = os.path.realpath(path)
        data = _sanitised(real)
        if data is not None:
            uppers.add(real, "file", data)
    if wd is not None:
        uppers.add(wd, "opaque", hide=False)
    uppers.add("/etc/hosts", "file", hosts, hide=False)
    if resolv is not None:
        uppers.add("/etc/resolv.conf", "file", resolv, hide=False)
    for layer, entries in zip(layers, uppers.entries, strict=True):
        layer["entries"] = list(entries.values())
        seed = next((d for target, d in snapshot if target == layer["target"]), None)
        if seed is not None and layer["mode"] == "overlay":
            layer["seed"] = seed
    return {
        "kind": "overlay",
        "root": root,
        "ovl": ovl,
        "xattr": "trusted",
        "layers": layers,
        "fix": "host-image mode needs overlayfs over the host's root (`modprobe overlay`); "
        "or give the sandbox an image (--modal-sandbox-local-images=pull)",
    }


def masks_plan(*, root: str, empty_file: str, state_dirs: tuple[str, ...]) -> dict[str, object]:
    """Not root: the host's root read-only with the hidden paths covered (module docstring)."""
    hidden_dirs, hidden_files = hidden_paths(state_dirs)
    masks: list[list[str]] = [["dir", p] for p in REPLACED if os.path.isdir(p)]
    masks += [["dir", p] for p in hidden_dirs if not any(_under(p, r) for r in REPLACED)]
    masks += [["file", p] for p in (*hidden_files, *SANITISED) if os.path.isfile(p)]
    return {
        "kind": "masks",
        "root": root,
        "empty": empty_file,
        "masks": masks,
        "fix": "not as root, host-image mode needs Linux >= 5.12 (mount_setattr); or give the "
        "sandbox an image (--modal-sandbox-local-images=pull)",
    }


# --- building (in the keeper) ----------------------------------------------------------------


def _option(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _apply(upper: str, entry: list[object], xattr: str) -> None:
    kind, rel = entry[0], str(entry[1])
    path = f"{upper}/{rel}" if rel else upper
    if rel and os.path.lexists(path):  # seeded from a snapshot: it has its own
        if kind != "file":
            return
        os.unlink(path)
    if kind == "whiteout":
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        return
    mode, uid, gid = (int(x) for x in entry[2:5])  # type: ignore[call-overload]
    if kind == "file":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, entry[5])  # type: ignore[arg-type]
        finally:
            os.close(fd)
    elif rel:
        os.mkdir(path, 0o700)
    if xattr == "trusted":  # as root: the owner of what it replaces
        os.chown(path, uid, gid)
    os.chmod(path, mode)
    if kind == "opaque":
        os.setxattr(path, f"{xattr}.overlay.opaque", b"y")


def _seed(source: str, upper: str) -> None:
    """Copy a snapshot's upper layer into a new one (owners, modes, xattrs, whiteouts kept)."""
    done = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", f"{source}/.", upper],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
    )
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise OSError(f"cannot copy the snapshot layer {source}: {detail}")


def _build_overlay(plan: dict[str, object]) -> list[str]:
    root, ovl, xattr = str(plan["root"]), str(plan["ovl"]), str(plan["xattr"])
    layers: list[dict[str, object]] = plan["layers"]  # type: ignore[assignment]
    # The upper layers live on a tmpfs private to this mount namespace: nothing reaches a disk,
    # it works whatever the state dir's file system (overlayfs cannot be an upper layer, as in
    # a container), and it vanishes with the keeper even if nobody cleans up.
    linux.mount("tmpfs", ovl, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=700")
    mounted = [ovl]
    try:
        os.makedirs(root, exist_ok=True)  # in the tmpfs (rootfs.overlay_root), or given
        for index, layer in enumerate(layers):
            if layer["mode"] == "overlay":
                upper, work = f"{ovl}/upper/{index}", f"{ovl}/work/{index}"
                os.makedirs(upper)
                os.makedirs(work)
                if layer.get("seed"):
                    _seed(str(layer["seed"]), upper)
                for entry in layer["entries"]:  # type: ignore[attr-defined]
                    _apply(upper, entry, xattr)
        for index, layer in enumerate(layers):
            target = root + ("" if layer["target"] == "/" else str(layer["target"]))
            lower = layer["lower"]
            try:
                if layer["mode"] == "overlay":
                    # a list: snapshot layers (newest first) over the root's own lower layer
                    lowers = lower if isinstance(lower, list) else [lower]
                    options = "lowerdir=" + ":".join(_option(str(d)) for d in lowers)
                    options += f",upperdir={_option(f'{ovl}/upper/{index}')}"
                    options += f",workdir={_option(f'{ovl}/work/{index}')}"
                    if xattr == "user":
                        options += ",userxattr"
                    linux.mount("overlay", target, "overlay", 0, options)
                else:
                    linux.mount(str(lower), target, None, linux.MS_BIND, None)
            except OSError:
                if index == 0:
                    raise
                continue  # a host file system overlayfs refuses: the view shows it empty
            mounted.append(target)
    except BaseException:
        for target in reversed(mounted):
            linux.umount(target)
        raise
    return mounted


def _build_masks(plan: dict[str, object]) -> list[str]:
    root, empty = str(plan["root"]), str(plan["empty"])
    linux.mount("/", root, None, linux.MS_BIND | linux.MS_REC, None)
    for kind, path in plan["masks"]:  # type: ignore[attr-defined]
        if kind == "dir":
            flags = linux.MS_NOSUID | linux.MS_NODEV
            linux.mount("tmpfs", root + path, "tmpfs", flags, "mode=755,size=4k")
        else:
            linux.mount(empty, root + path, None, linux.MS_BIND, None)
    linux.make_readonly(root)
    return [root]


def build_mount_overlays(plan: dict[str, object]) -> list[str]:
    """The sandbox's overlaid ``mounts`` (``copies.py``): a tmpfs for their upper layers, then
    one overlayfs per directory; returns what was mounted, in order."""
    ovl, xattr = str(plan["ovl"]), str(plan["xattr"])
    layers: list[dict[str, str]] = plan["layers"]  # type: ignore[assignment]
    os.mkdir(ovl, 0o700)
    linux.mount("tmpfs", ovl, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=700")
    mounted = [ovl]
    try:
        for index, layer in enumerate(layers):
            upper, work = f"{ovl}/upper/{index}", f"{ovl}/work/{index}"
            os.makedirs(upper)
            os.makedirs(work)
            options = f"lowerdir={_option(layer['lower'])},upperdir={_option(upper)}"
            options += f",workdir={_option(work)}"
            if xattr == "user":
                options += ",userxattr"
            linux.mount("overlay", layer["at"], "overlay", 0, options)
            mounted.append(layer["at"])
    except BaseException:
        for target in reversed(mounted):
            linux.umount(target)
        raise
    return mounted


def build(plan: dict[str, object]) -> list[str]:
    """Mount the sandbox's root as planned (in the keeper's own mount namespace); returns what
    was mounted, first the root."""
    if plan["kind"] == "masks":
        return _build_masks(plan)
    return _build_overlay(plan)
