"""Apply OCI layer tarballs onto a directory, safely and without root privileges.

Semantics follow the OCI image spec's "Applying changesets":

* ``.wh.<name>`` deletes ``<name>`` from lower layers, ``.wh..wh..opq`` empties its directory of
  lower-layer content; neither touches what the same layer adds (in whatever order the
  entries come).
* Hard links, symlinks, FIFOs, permissions (incl. setuid) and mtimes are reproduced; device
  files are skipped (the sandbox gets its own ``/dev``) and listed in the report.
* Ownership is applied when running as root; otherwise it cannot be, and non-root owners are
  recorded in the report (the sandbox runs as uid 0 in a user namespace, so files appear
  root-owned there).
* Entry names that are absolute or climb out with ``..`` are refused, and so is an entry whose
  parent path leads out of the root through a symlink.  Symlinks inside the root are followed
  the way the container will see them (absolute targets are relative to the root); a path is
  never written through a symlink at its final component (the symlink is replaced).

Directory modes are applied last, deepest first, so a read-only directory in a lower layer
does not stop later layers from writing into it.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import importlib
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .errors import LayerError

__all__ = ["LayerApplier", "UnpackReport", "open_layer", "remove_tree"]

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_CHUNK = 1 << 20


@dataclasses.dataclass
class UnpackReport:
    """What could not be reproduced exactly: for the image's metadata file."""

    owners: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)


class _HashingReader:
    """Reads through ``raw`` while hashing: verifies a layer's ``diff_id`` as it is unpacked."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.hasher.hexdigest()


class _ZstdPipe:
    """``zstd -dc`` as a readable stream, for when no zstd Python module is installed."""

    def __init__(self, path: Path) -> None:
        try:
            self.proc = subprocess.Popen(
                ["zstd", "-dcq", "--", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise LayerError(
                f"layer {path.name} is zstd-compressed; install the 'zstd' command "
                "(apt-get install zstd) or the 'zstandard' Python package"
            ) from None
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout

    def read(self, size: int = -1) -> bytes:
        return self.stdout.read(size)

    def close(self) -> None:
        self.stdout.close()
        err = self.proc.stderr.read() if self.proc.stderr else b""
        if self.proc.stderr:
            self.proc.stderr.close()
        code = self.proc.wait()
        if code != 0:
            raise LayerError(f"zstd failed (exit {code}): {err.decode(errors='replace').strip()}")


def _zstd_module() -> Any:
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def open_layer(path: Path) -> Any:
    """Open a layer blob for reading its uncompressed tar (gzip/zstd detected by magic bytes)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\x28\xb5\x2f\xfd":
        module = _zstd_module()
        if module is not None:
            return module.open(path, "rb")
        try:
            zstandard = importlib.import_module("zstandard")
        except ImportError:
            return _ZstdPipe(path)
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def remove_tree(path: Path) -> None:
    """Remove a tree even where unpacked modes forbid it (0555 dirs, as a non-root user)."""

    def fix(func: Any, p: str, exc: Any) -> None:
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                _rmtree(p, fix)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass

    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    _rmtree(path, fix)


def _rmtree(path: str | Path, fix: Any) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:  # pragma: no cover - depends on the Python version
        shutil.rmtree(path, onerror=fix)


class LayerApplier:
    """Unpacks layers, bottom first, into ``root`` (an empty directory we own)."""

    def __init__(self, root: Path, *, chown: bool | None = None) -> None:
        self.root = root
        self.chown = os.geteuid() == 0 if chown is None else chown
        self.report = UnpackReport()
        self._dirs: dict[str, tuple[int, float]] = {}  # rel -> (mode, mtime)
        self._created: set[str] = set()  # rel paths this layer added
        self._created_parents: set[str] = set()  # their ancestors
        self._layer = ""

    def __enter__(self) -> LayerApplier:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    # -- paths --------------------------------------------------------------------------------

    def _err(self, entry: str, why: str) -> LayerError:
        return LayerError(f"layer {self._layer}: entry {entry!r} {why}; the image was not unpacked")

    def _clean(self, name: str, entry: str) -> str:
        """Normalise an entry name to a root-relative path (``"."`` is the root itself)."""
        if name.startswith("/"):
            raise self._err(entry, "is an absolute path (layers must use relative paths)")
        if "\x00" in name:
            raise self._err(entry, "contains a NUL byte")
        rel = posixpath.normpath(name)
        if rel == ".." or rel.startswith("../"):
            raise self._err(entry, "escapes the image root with '..'")
        return rel

    def _host(self, rel: str) -> Path:
        return self.root if rel == "." else self.root / rel

    def _resolve_dir(self, rel: str, entry: str, *, create: bool | None) -> str | None:
        """Resolve directory path ``rel`` inside the root, following in-root symlinks.

        A missing component is created (``create=True``), refused (``False``) or makes the
        result None (``None``).
        """
        pending = [] if rel == "." else rel.split("/")
        pending.reverse()
        current: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise self._err(entry, "leads out of the image root through a symlink")
                current.pop()
                continue
            host = self.root.joinpath(*current, part)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if create is None:
                    return None
                if not create:
                    raise self._err(
                        entry, f"refers to {'/'.join([*current, part])!r}, which does not exist"
                    ) from None
                os.mkdir(host, 0o755)
                current.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise self._err(entry, "goes through too many levels of symlinks")
                target = os.readlink(host)
                if target.startswith("/"):
                    current = []
                pending.extend(reversed(target.split("/")))
            elif stat.S_ISDIR(st.st_mode):
                current.append(part)
            else:
                raise self._err(entry, f"needs {'/'.join([*current, part])!r} to be a directory")
        return "/".join(current) or "."

    def _place(self, rel: str, entry: str) -> tuple[str, Path]:
        """Resolved rel path and host path for an entry (its parent exists, is in-root)."""
        parent, base = posixpath.split(rel)
        parent_rel = self._resolve_dir(parent or ".", entry, create=True)
        assert parent_rel is not None
        resolved = base if parent_rel == "." else f"{parent_rel}/{base}"
        return resolved, self._host(resolved)

    # -- whiteouts ----------------------------------------------------------------------------

    def _mark_created(self, rel: str) -> None:
        self._created.add(rel)
        parent = posixpath.dirname(rel)
        while parent and parent not in self._created_parents:
            self._created_parents.add(parent)
            parent = posixpath.dirname(parent)

    def _remove_lower(self, rel: str) -> None:
        """Delete ``rel`` as seen from lower layers, keeping what the current layer added."""
        if rel in self._created:
            return
        host = self._host(rel)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if rel in self._created_parents:
                for child in os.listdir(host):
                    self._remove_lower(f"{rel}/{child}")
                return
            remove_tree(host)
        else:
            os.unlink(host)
        self._dirs.pop(rel, None)

    # -- entries ------------------------------------------------------------------------------

    def _clear_for(self, host: Path, want_dir: bool) -> None:
        """Make room for a new entry at ``host`` (replace a file/symlink; a dir unless wanted)."""
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not want_dir:
                remove_tree(host)
        else:
            os.unlink(host)

    def _owner(self, host: Path, rel: str, member: tarfile.TarInfo) -> None:
        if self.chown:
            os.chown(host, member.uid, member.gid, follow_symlinks=False)
        elif member.uid or member.gid:
            self.report.owners["/" + rel] = (member.uid, member.gid)

    def _xattrs(self, host: Path, member: tarfile.TarInfo) -> None:
        if not self.chown:
            return
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if name.startswith(("security.capability", "user.")):
                try:
                    os.setxattr(
                        host, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False
                    )
                except OSError:
                    pass

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        entry = member.name
        rel = self._clean(member.name, entry)
        base = posixpath.basename(rel)
        if base.startswith(_WH):
            parent = self._resolve_dir(posixpath.dirname(rel) or ".", entry, create=None)
            if parent is None:
                return  # nothing below to hide
            if base == _OPAQUE:
                host = self._host(parent)
                for child in os.listdir(host):
                    self._remove_lower(child if parent == "." else f"{parent}/{child}")
            elif not base.startswith(_WH + _WH):  # .wh..wh.* other than opq: aufs metadata
                name = base[len(_WH) :]
                if name in ("", ".", ".."):
                    raise self._err(entry, "is a whiteout of an invalid name")
                self._remove_lower(name if parent == "." else f"{parent}/{name}")
            return
        if rel == ".":
            if member.isdir():
                self._dirs["."] = (member.mode & 0o7777, member.mtime)
            return

        resolved, host = self._place(rel, entry)
        if member.isdir():
            self._clear_for(host, want_dir=True)
            if not os.path.isdir(host):
                os.mkdir(host, 0o755)
            os.chmod(host, 0o755 | stat.S_IRWXU)
            self._dirs[resolved] = (member.mode & 0o7777, member.mtime)
            self._owner(host, resolved, member)
            self._xattrs(host, member)
            self._mark_created(resolved)
            return
        if member.isreg():
            self._clear_for(host, want_dir=False)
            src = tar.extractfile(member)
            fd = os.open(
                host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            with os.fdopen(fd, "wb") as out:
                if src is not None:
                    shutil.copyfileobj(src, out, _CHUNK)
            self._owner(host, resolved, member)
            os.chmod(host, member.mode & 0o7777)
            self._xattrs(host, member)
        elif member.issym():
            self._clear_for(host, want_dir=False)
            os.symlink(member.linkname, host)
            self._owner(host, resolved, member)
        elif member.islnk():
            target_rel = self._clean(member.linkname, entry + " -> " + member.linkname)
            t_parent, t_base = posixpath.split(target_rel)
            t_dir = self._resolve_dir(t_parent or ".", entry, create=False)
            assert t_dir is not None
            target = self._host(t_base if t_dir == "." else f"{t_dir}/{t_base}")
            try:
                t_st = os.lstat(target)
            except FileNotFoundError:
                raise self._err(
                    entry, f"is a hard link to {member.linkname!r}, which does not exist"
                ) from None
            if stat.S_ISDIR(t_st.st_mode):
                raise self._err(entry, f"is a hard link to directory {member.linkname!r}")
            try:
                h_st = os.lstat(host)
                if (h_st.st_dev, h_st.st_ino) == (t_st.st_dev, t_st.st_ino):
                    return
            except FileNotFoundError:
                pass
            self._clear_for(host, want_dir=False)
            os.link(target, host, follow_symlinks=False)
        elif member.isfifo():
            self._clear_for(host, want_dir=False)
            os.mkfifo(host, 0o600)
            self._owner(host, resolved, member)
            os.chmod(host, member.mode & 0o7777)
        elif member.ischr() or member.isblk():
            self.report.skipped.append(f"/{resolved} (device {member.devmajor}:{member.devminor})")
            return
        else:
            self.report.skipped.append(f"/{resolved} (tar type {member.type!r})")
            return
        if not member.islnk():
            os.utime(host, (member.mtime, member.mtime), follow_symlinks=False)
        self._mark_created(resolved)

    # -- public -------------------------------------------------------------------------------

    def apply(self, blob: Path, *, diff_id: str | None, name: str) -> None:
        """Apply one layer blob; verify its uncompressed digest against ``diff_id``."""
        self._layer = name
        self._created.clear()
        self._created_parents.clear()
        stream = open_layer(blob)
        try:
            reader = _HashingReader(stream)
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        self._entry(tar, member)
                actual = reader.drain()
            except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, ValueError) as exc:
                raise LayerError(f"layer {name} is not a valid tar archive: {exc}") from exc
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise LayerError(f"no space left unpacking layer {name}: {exc}") from exc
                raise LayerError(f"layer {name} could not be unpacked: {exc}") from exc
        finally:
            stream.close()
        if diff_id is not None and actual != diff_id:
            raise LayerError(
                f"layer {name} unpacks to {actual}, but the image config says {diff_id}; the "
                "image is corrupt and was not used"
            )

    def finish(self) -> UnpackReport:
        """Apply directory modes and mtimes (deepest first) once every layer is in."""
        for rel in sorted(self._dirs, key=lambda r: r.count("/") + (r != "."), reverse=True):
            mode, mtime = self._dirs[rel]
            host = self._host(rel)
            if not os.path.isdir(host) or os.path.islink(host):
                continue
            os.chmod(host, mode)
            os.utime(host, (mtime, mtime), follow_symlinks=False)
        return self.report
