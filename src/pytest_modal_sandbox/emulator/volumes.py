"""Modal Volumes (v1, what the 1.6 client gets by default): named file trees that outlive
sandboxes, mounted with ``Sandbox.create(volumes={path: vol})``.

Each volume is a directory under the emulator's state dir (``volumes/<id>/``): ``meta.json``
(name, environment, creation time) and ``data/``, the *committed* tree; they persist across
emulator restarts with the same ``--state-dir``.  A sandbox never writes the committed tree
directly.  As on Modal, a mount shows the volume as it was committed when the container
started (or last reloaded), and what a sandbox writes becomes visible to others only once
committed:

* at mount, the committed tree (or its ``sub_path``) is copied into a *working copy*
  (``volumes/<id>/mounts/<key>/``), which is bound into the sandbox at the mount path;
* a commit merges the working copy's changes since its base (files and directories created,
  changed or removed by the sandbox) into the committed tree: last writer wins, file by file,
  as Modal documents.  Commits happen in the background every ``BACKGROUND_COMMIT`` seconds
  (Modal's background commits; the client asks for them), on ``sync <mount path>`` run in the
  sandbox, on ``sb.reload_volumes()`` and when the sandbox ends;
* a reload (``sb.reload_volumes()``) commits, then brings the working copy to the committed
  state.

The file API of the client (``listdir``, ``read_file``, ``batch_upload``, ``remove_file``,
``copy_files``) works on the committed tree.  Volume paths never leave ``data/``: ``..`` is
stops at its root and symlinks are not followed out of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock
from modal_proto import api_pb2

from . import ids
from .registry import DEFAULT_ENVIRONMENT
from .rpc_error import RpcError

BACKGROUND_COMMIT = 5.0  # seconds between a mounted volume's background commits
EPHEMERAL_TTL = 300.0  # an ephemeral volume without heartbeats is deleted after this long
V1 = api_pb2.VOLUME_FS_VERSION_V1


class Entry(NamedTuple):
    """What a commit compares: an entry changed if any of these did."""

    kind: str  # "file", "dir", "link"
    size: int
    mtime_ns: int
    mode: int
    link: str


Manifest = dict[str, Entry]


@dataclass(eq=False)
class Volume:
    id: str
    name: str | None
    environment: str
    created_at: float
    ephemeral: bool
    root: Path
    owner: int = 0  # an ephemeral volume's emulator (pid)
    lock: threading.RLock = field(default_factory=threading.RLock)
    heartbeat: float = field(default_factory=time.monotonic)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def metadata(self) -> api_pb2.VolumeMetadata:
        return api_pb2.VolumeMetadata(
            version=V1,
            name=self.name or "",
            creation_info=api_pb2.CreationInfo(created_at=self.created_at, created_by="emulator"),
        )


@dataclass(eq=False)
class WorkingCopy:
    """One mount of a volume in one sandbox: the host directory bound at ``mount_path``."""

    volume: Volume
    mount_path: str
    path: Path
    sub_path: str
    read_only: bool
    base: Manifest
    committed_at: float = field(default_factory=time.monotonic)

    @property
    def source(self) -> Path:
        """The committed directory this working copy stands for."""
        return self.volume.data / self.sub_path if self.sub_path else self.volume.data


class VolumeStore:
    """All volumes of one emulator state dir; blocking file I/O (call from a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._by_id: dict[str, Volume] = {}
        self._lock = threading.Lock()
        # Several emulators may share the directory (the default one is per user): the disk
        # is the registry, creations and renames take a file lock, and each emulator only
        # clears what an emulator that is gone left (working copies, ephemeral volumes).
        self._file_lock = FileLock(str(self.root / ".lock"))
        with self._file_lock:
            self._refresh()
            for vol in list(self._by_id.values()):
                if vol.ephemeral and not _alive(vol.owner):
                    self._remove(vol)
                    continue
                for wc in (vol.root / "mounts").glob("*"):
                    pid, _, _ = wc.name.partition("-")
                    if not (pid.isdigit() and _alive(int(pid))):
                        shutil.rmtree(wc, ignore_errors=True)

    def _refresh(self) -> None:
        """The volumes on disk now (others' creations appear, their deletions disappear)."""
        found: dict[str, Volume] = {}
        for meta in sorted(self.root.glob("*/meta.json")):
            known = self._by_id.get(meta.parent.name)
            try:
                data = json.loads(meta.read_text())
                vol = known or Volume(
                    id=meta.parent.name,
                    name=data["name"],
                    environment=data["environment"],
                    created_at=float(data["created_at"]),
                    ephemeral=bool(data.get("ephemeral")),
                    root=meta.parent,
                    owner=int(data.get("owner", 0)),
                )
                vol.name = data["name"]  # renamed by another emulator
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found[vol.id] = vol
        with self._lock:
            self._by_id = found

    # -- the registry ------------------------------------------------------------------------
    def get_or_create(
        self, name: str, environment: str, creation_type: int, version: int
    ) -> tuple[Volume, bool]:
        """``VolumeGetOrCreate``: the volume and whether it was created."""
        if version not in (api_pb2.VOLUME_FS_VERSION_UNSPECIFIED, V1):
            raise RpcError(
                "INVALID_ARGUMENT",
                "the Modal emulator implements v1 volumes (the client's default), not v2: "
                "leave out version=",
            )
        env = environment or DEFAULT_ENVIRONMENT
        self._expire_ephemeral()
        if creation_type == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL:
            with self._file_lock:
                return self._create(None, env, ephemeral=True), True
        if not ids.OBJECT_NAME.match(name):
            raise RpcError(
                "INVALID_ARGUMENT",
                f"invalid Volume name {name!r}: 1-64 letters, digits, '.', '-' or '_'",
            )
        with self._file_lock:
            self._refresh()
            found = self._by_name(name, env)
            if found is not None:
                if creation_type == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS:
                    raise RpcError("ALREADY_EXISTS", f"Volume {name!r} already exists")
                return found, False
            if creation_type not in (
                api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
            ):
                raise RpcError(
                    "NOT_FOUND",
                    f"Volume {name!r} not found in environment {env!r}: pass "
                    "create_if_missing=True to create it",
                )
            return self._create(name, env, ephemeral=False), True

    def _by_name(self, name: str, environment: str) -> Volume | None:
        with self._lock:
            volumes = list(self._by_id.values())
        for vol in volumes:
            if vol.name == name and vol.environment == environment:
                return vol
        return None

    def _create(self, name: str | None, environment: str, *, ephemeral: bool) -> Volume:
        vol = Volume(
            id=ids.object_id("vo"),
            name=name,
            environment=environment,
            created_at=time.time(),
            ephemeral=ephemeral,
            root=self.root / "pending",
            owner=os.getpid() if ephemeral else 0,
        )
        vol.root = self.root / vol.id
        vol.data.mkdir(parents=True)
        self._write_meta(vol)
        with self._lock:
            self._by_id[vol.id] = vol
        return vol

    def _write_meta(self, vol: Volume) -> None:
        meta = {
            "name": vol.name,
            "environment": vol.environment,
            "created_at": vol.created_at,
            "ephemeral": vol.ephemeral,
            "owner": vol.owner,
        }
        tmp = vol.root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, vol.root / "meta.json")

    def get(self, volume_id: str) -> Volume:
        with self._lock:
            vol = self._by_id.get(volume_id)
        if vol is None or not (vol.root / "meta.json").exists():
            self._refresh()  # made, or deleted, by another emulator on this directory
            with self._lock:
                vol = self._by_id.get(volume_id)
        if vol is None:
            raise RpcError("NOT_FOUND", f"Volume {volume_id} not found")
        return vol

    def named(self, environment: str, created_before: float, limit: int) -> list[Volume]:
        """Named volumes, newest first, created strictly before ``created_before`` (if set)."""
        env = environment or DEFAULT_ENVIRONMENT
        self._refresh()
        with self._lock:
            found = [
                v
                for v in self._by_id.values()
                if v.name
                and v.environment == env
                and (not created_before or v.created_at < created_before)
            ]
        found.sort(key=lambda v: v.created_at, reverse=True)
        return found[:limit] if limit > 0 else found

    def delete(self, volume_id: str) -> None:
        self._remove(self.get(volume_id))

    def _remove(self, vol: Volume) -> None:
        with self._lock:
            self._by_id.pop(vol.id, None)
        with vol.lock:
            with contextlib.suppress(FileNotFoundError):
                (vol.root / "meta.json").unlink()  # gone for everyone at once
            shutil.rmtree(vol.root, ignore_errors=True)

    def rename(self, volume_id: str, name: str) -> None:
        vol = self.get(volume_id)
        with self._file_lock:
            self._refresh()
            holder = self._by_name(name, vol.environment)
            if holder is not None and holder is not vol:
                raise RpcError("ALREADY_EXISTS", f"Volume {name!r} already exists")
            vol.name = name
            self._write_meta(vol)

    def beat(self, volume_id: str) -> None:
        self.get(volume_id).heartbeat = time.monotonic()

    def _expire_ephemeral(self) -> None:
        cutoff = time.monotonic() - EPHEMERAL_TTL
        with self._lock:
            gone = [
                v
                for v in self._by_id.values()
                if v.ephemeral and v.owner == os.getpid() and v.heartbeat < cutoff
            ]
        for vol in gone:
            self._remove(vol)

    def close(self) -> None:
        """The emulator stops: its ephemeral volumes go with it."""
        with self._lock:
            ephemeral = [v for v in self._by_id.values() if v.ephemeral and v.owner == os.getpid()]
        for vol in ephemeral:
            self._remove(vol)

    # -- the file API (the committed tree) ---------------------------------------------------
    def list_files(self, vol: Volume, path: str, recursive: bool) -> list[api_pb2.FileEntry]:
        with vol.lock:
            rel = _relative(path)
            target = _inside(vol.data, rel)
            if not os.path.lexists(target):
                raise RpcError("NOT_FOUND", f"No such file or directory: {path!r}")
            if not target.is_dir() or target.is_symlink():
                return [_file_entry(target, rel)]
            out = []
            if recursive:
                for dirpath, dirnames, filenames in os.walk(target):
                    dirnames.sort()
                    for name in sorted(dirnames + filenames):
                        full = Path(dirpath) / name
                        out.append(_file_entry(full, full.relative_to(vol.data).as_posix()))
            else:
                for name in sorted(os.listdir(target)):
                    out.append(_file_entry(target / name, posixpath.join(rel, name)))
            return out

    def file(self, vol: Volume, path: str) -> Path:
        """The committed file at ``path`` (for reading)."""
        target = _inside(vol.data, _relative(path))
        if not target.exists():
            raise RpcError("NOT_FOUND", f"No such file: {path!r}")
        if not target.is_file():
            raise RpcError("INVALID_ARGUMENT", f"{path!r} is not a file")
        return target

    def put_files(
        self,
        vol: Volume,
        files: Iterable[tuple[str, int, Callable[[], bytes]]],
        *,
        overwrite: bool,
    ) -> None:
        """``VolumePutFiles``: ``(path, mode, content)`` written into the committed tree."""
        with vol.lock:
            for path, mode, content in files:
                rel = _relative(path)
                if not rel:
                    raise RpcError("INVALID_ARGUMENT", f"{path!r} is not a file path")
                target = _inside(vol.data, rel)
                if target.is_dir() and not target.is_symlink():
                    raise RpcError("INVALID_ARGUMENT", f"{path!r} is a directory")
                if os.path.lexists(target) and not overwrite:
                    raise RpcError(
                        "ALREADY_EXISTS",
                        f"{path!r} already exists in the volume (batch_upload(force=True) "
                        "overwrites)",
                    )
                _inside(vol.data, posixpath.dirname(rel)).mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.upload")
                tmp.write_bytes(content())
                os.chmod(tmp, stat.S_IMODE(mode) or 0o644)
                os.replace(tmp, target)

    def remove(self, vol: Volume, path: str, recursive: bool) -> None:
        with vol.lock:
            rel = _relative(path)
            target = _inside(vol.data, rel)
            if not rel:
                raise RpcError("INVALID_ARGUMENT", "the volume's root cannot be removed")
            if not os.path.lexists(target):
                raise RpcError("NOT_FOUND", f"No such file or directory: {path!r}")
            if target.is_dir() and not target.is_symlink():
                if not recursive:
                    raise RpcError(
                        "INVALID_ARGUMENT", f"{path!r} is a directory: pass recursive=True"
                    )
                shutil.rmtree(target)
            else:
                target.unlink()

    def copy(self, vol: Volume, sources: list[str], destination: str) -> None:
        """``VolumeCopyFiles`` with ``cp``'s rules (files only, as Modal's v1)."""
        with vol.lock:
            dst_rel = _relative(destination)
            dst = _inside(vol.data, dst_rel)
            into = len(sources) > 1 or destination.endswith("/") or dst.is_dir()
            if len(sources) > 1 and not dst.is_dir():
                raise RpcError("INVALID_ARGUMENT", f"{destination!r} is not a directory")
            for src_path in sources:
                src = _inside(vol.data, _relative(src_path))
                if not src.exists():
                    raise RpcError("NOT_FOUND", f"No such file: {src_path!r}")
                if src.is_dir():
                    raise RpcError("INVALID_ARGUMENT", f"{src_path!r} is a directory")
                target = dst / src.name if into else dst
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)

    # -- mounts ------------------------------------------------------------------------------
    def checkout(
        self, vol: Volume, key: str, mount_path: str, sub_path: str, read_only: bool
    ) -> WorkingCopy:
        """A working copy of the committed tree (or ``sub_path`` of it) for one mount."""
        sub = _relative(sub_path)
        path = vol.root / "mounts" / f"{os.getpid()}-{key}"  # this emulator's (see __init__)
        with vol.lock:
            source = _inside(vol.data, sub)
            source.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy_tree(source, path)
        return WorkingCopy(vol, mount_path, path, sub, read_only, scan(path))

    def commit(self, wc: WorkingCopy) -> None:
        """Merge the working copy's changes since its base into the committed tree."""
        wc.committed_at = time.monotonic()
        if wc.read_only or not wc.path.is_dir():
            return
        with wc.volume.lock:
            if not wc.volume.data.is_dir():  # the volume was deleted meanwhile
                return
            now = scan(wc.path)
            target = _inside(wc.volume.data, wc.sub_path)
            target.mkdir(parents=True, exist_ok=True)
            for rel in sorted(wc.base.keys() - now.keys(), reverse=True):
                _remove(target / rel)
            for rel, entry in sorted(now.items()):
                if wc.base.get(rel) != entry:
                    _copy_entry(wc.path / rel, _inside(target, rel), entry)
            wc.base = now

    def reload(self, wc: WorkingCopy) -> None:
        """Commit, then make the working copy the committed tree (others' commits appear)."""
        self.commit(wc)
        with wc.volume.lock:
            source = wc.source
            if not source.is_dir():
                return
            committed = scan(source)
            mine = scan(wc.path)
            for rel in sorted(mine.keys() - committed.keys(), reverse=True):
                _remove(wc.path / rel)
            for rel, entry in sorted(committed.items()):
                if mine.get(rel) != entry:
                    _copy_entry(source / rel, wc.path / rel, entry)
            wc.base = scan(wc.path)

    def release(self, wc: WorkingCopy) -> None:
        """The sandbox ended: a last commit, then the working copy goes."""
        try:
            self.commit(wc)
        finally:
            shutil.rmtree(wc.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scan(root: Path) -> Manifest:
    """Every entry under ``root`` (not following symlinks), by relative path."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("link", 0, 0, 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("dir", 0, 0, stat.S_IMODE(st.st_mode), "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = Entry("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), "")
    return out


def _relative(path: str) -> str:
    """A volume path as a relative path inside the volume ("" for its root); ``..`` stops at
    the volume's root, as at a file system's."""
    return posixpath.normpath("/" + (path or "")).lstrip("/")


def _inside(base: Path, rel: str) -> Path:
    """``base/rel``, refusing paths whose parents resolve (through symlinks) out of ``base``."""
    target = base / rel if rel else base
    parent = os.path.realpath(target.parent) if rel else os.path.realpath(base)
    root = os.path.realpath(base)
    if rel and not (parent == root or parent.startswith(root + os.sep)):
        raise RpcError("INVALID_ARGUMENT", f"{rel!r} leads out of the volume")
    if target.is_symlink():
        resolved = os.path.realpath(target)
        if not (resolved == root or resolved.startswith(root + os.sep)):
            raise RpcError("INVALID_ARGUMENT", f"{rel!r} is a link out of the volume")
    return target


def _file_entry(path: Path, rel: str) -> api_pb2.FileEntry:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind = api_pb2.FileEntry.FileType.SYMLINK
    elif stat.S_ISDIR(st.st_mode):
        kind = api_pb2.FileEntry.FileType.DIRECTORY
    elif stat.S_ISFIFO(st.st_mode):
        kind = api_pb2.FileEntry.FileType.FIFO
    elif stat.S_ISSOCK(st.st_mode):
        kind = api_pb2.FileEntry.FileType.SOCKET
    else:
        kind = api_pb2.FileEntry.FileType.FILE
    size = st.st_size if kind == api_pb2.FileEntry.FileType.FILE else 0
    return api_pb2.FileEntry(path=rel, type=kind, mtime=int(st.st_mtime), size=size)


def _copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, symlinks=True, copy_function=shutil.copy2)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _copy_entry(source: Path, dest: Path, entry: Entry) -> None:
    """Make ``dest`` what ``source`` is (a directory, a file or a symlink)."""
    if entry.kind == "dir":
        if os.path.lexists(dest) and not (dest.is_dir() and not dest.is_symlink()):
            _remove(dest)
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, entry.mode)
        return
    if dest.is_dir() and not dest.is_symlink():
        _remove(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.commit")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        if entry.kind == "link":
            os.symlink(entry.link, tmp)
        else:
            shutil.copy2(source, tmp, follow_symlinks=False)
    except FileNotFoundError:  # gone since the scan: the next commit sees it removed
        return
    os.replace(tmp, dest)
