"""The emulator's ``modal-sandbox-fs-tools``: Modal's filesystem API, run inside a sandbox.

``sandbox.filesystem.*`` in the client execs ``/__modal/.bin/modal-sandbox-fs-tools '<json>'``.
The emulator intercepts that exec and runs this file instead, with the same JSON contract as
Modal's Rust binary: one command per invocation, data on stdout/stdin, and on failure exit code
1 with ``{"version": 1, "error_kind": K, "message": M}`` on stderr, where K is what the client
maps to its ``SandboxFilesystem*Error`` classes.

It runs with the *host's* interpreter through the runtime's ``enter.py``: this module is loaded
on the host, then the process joins the sandbox's mount namespace and :func:`main` runs there,
so it works in any image (no Python, shell or ``cat`` needed inside).  Hence: stdlib only,
every import at module level, and owner names read from the image's ``/etc/passwd`` and
``/etc/group`` directly (``pwd``/``grp`` would load the host's NSS modules in a foreign root).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from typing import Any, NoReturn

READ_LIMIT = 4 * 1024**3  # refuse to stream files larger than this ("FileTooLarge")


class FsError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _fail(kind: str, message: str) -> NoReturn:
    raise FsError(kind, message)


def _from_oserror(exc: OSError, *, not_dir: str = "NotDirectory") -> NoReturn:
    code = exc.errno
    if code == errno.ENOENT:
        _fail("NotFound", "path does not exist")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        _fail("PermissionDenied", f"permission denied ({os.strerror(code)})")
    if code == errno.ENOTDIR:
        _fail(not_dir, "a component of the path is not a directory")
    if code == errno.EISDIR:
        _fail("IsDirectory", "expected a file path")
    if code == errno.ENOTEMPTY:
        _fail("DirectoryNotEmpty", "directory is not empty")
    if code == errno.EEXIST:
        _fail("PathAlreadyExists", "path already exists")
    _fail("Other", f"{os.strerror(code or 0)} (errno {code})")


_NAMES: dict[str, dict[int, str]] = {}


def _name(table: str, ident: int) -> str:
    """The name of uid/gid ``ident`` in ``/etc/passwd`` or ``/etc/group`` (else the number)."""
    names = _NAMES.get(table)
    if names is None:
        names = {}
        try:
            with open(table, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split(":")
                    if len(fields) >= 3 and fields[2].strip().isdigit():
                        names.setdefault(int(fields[2]), fields[0])
        except OSError:
            pass
        _NAMES[table] = names
    return names.get(ident, str(ident))


def _entry(path: str) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except OSError as exc:
        _from_oserror(exc)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "directory"
    else:
        kind = "file"
    entry: dict[str, Any] = {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": st.st_mode,
        "permissions": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": _name("/etc/passwd", st.st_uid),
        "group": _name("/etc/group", st.st_gid),
        "modified_time": st.st_mtime,
    }
    if kind == "symlink":
        entry["symlink_target"] = os.readlink(path)
    return entry


def read_file(path: str) -> None:
    if os.path.isdir(path):
        _fail("IsDirectory", "expected a file path")
    try:
        with open(path, "rb") as src:
            if os.fstat(src.fileno()).st_size > READ_LIMIT:
                _fail("FileTooLarge", f"file is larger than {READ_LIMIT} bytes")
            out = sys.stdout.buffer
            while chunk := src.read(256 * 1024):
                out.write(chunk)
            out.flush()
    except OSError as exc:
        _from_oserror(exc)


def write_file(path: str) -> None:
    if os.path.isdir(path):
        _fail("IsDirectory", "expected a file path")
    parent = os.path.dirname(path)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as dst:
            src = sys.stdin.buffer
            while chunk := src.read(256 * 1024):
                dst.write(chunk)
    except FileExistsError:
        _fail("NotDirectory", "a component of the path is not a directory")
    except OSError as exc:
        _from_oserror(exc)


def list_files(path: str) -> None:
    try:
        if not os.path.isdir(path):
            os.stat(path)  # NotFound vs. IsFile
            _fail("NotDirectory", "path is not a directory")
        names = sorted(os.listdir(path))
    except OSError as exc:
        _from_oserror(exc)
    entries = [_entry(os.path.join(path, name)) for name in names]
    sys.stdout.write(json.dumps(entries))


def stat_path(path: str) -> None:
    sys.stdout.write(json.dumps(_entry(path)))


def make_directory(path: str, parents: bool) -> None:
    try:
        if parents:
            if os.path.lexists(path) and not os.path.isdir(path):
                _fail("PathAlreadyExists", "path already exists and is not a directory")
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
    except OSError as exc:
        _from_oserror(exc)


def remove(path: str, recursive: bool) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
        elif recursive:
            for root, dirs, files in os.walk(path, topdown=False):
                for name in files:
                    os.unlink(os.path.join(root, name))
                for name in dirs:
                    full = os.path.join(root, name)
                    if os.path.islink(full):
                        os.unlink(full)
                    else:
                        os.rmdir(full)
            os.rmdir(path)
        else:
            os.rmdir(path)
    except OSError as exc:
        _from_oserror(exc)


def _snapshot(path: str, recursive: bool) -> dict[str, tuple[int, int, int]]:
    """Path -> (inode, size, mtime_ns) for what a watch on ``path`` reports about."""
    out: dict[str, tuple[int, int, int]] = {}

    def add(p: str) -> None:
        try:
            st = os.lstat(p)
        except OSError:
            return
        out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)

    if not os.path.isdir(path):
        add(path)
        return out
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                add(os.path.join(root, name))
    else:
        try:
            names = os.listdir(path)
        except OSError:
            return out
        for name in names:
            add(os.path.join(path, name))
    return out


def watch(path: str, recursive: bool, filter_: list[str] | None, timeout: float | None) -> None:
    """Report changes as JSON lines, by polling (no inotify needed), until stdin EOF/timeout."""
    path = os.path.realpath(path)
    if not os.path.lexists(path):
        _fail("NotFound", "path does not exist")
    stop = threading.Event()

    def wait_for_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    before = _snapshot(path, recursive)

    def emit(kind: str, paths: list[str]) -> None:
        if filter_ is None or kind in filter_:
            sys.stdout.write(json.dumps({"event_type": kind, "paths": paths}) + "\n")
            sys.stdout.flush()

    while not stop.wait(0.1):
        if deadline is not None and time.monotonic() >= deadline:
            break
        after = _snapshot(path, recursive)
        for p in sorted(after.keys() - before.keys()):
            emit("Create", [p])
        for p in sorted(before.keys() - after.keys()):
            emit("Remove", [p])
        for p in sorted(after.keys() & before.keys()):
            if after[p] != before[p]:
                emit("Modify", [p])
        before = after


def run(command: dict[str, Any]) -> None:
    if not isinstance(command, dict) or len(command) != 1:
        _fail("InvalidCommand", "expected one command object")
    ((op, args),) = command.items()
    if not isinstance(args, dict) or not isinstance(args.get("path"), str):
        _fail("InvalidCommand", f"{op}: 'path' must be a string")
    path = args["path"]
    if not path.startswith("/"):
        _fail("InvalidCommand", f"{op}: path must be absolute, got {path!r}")
    if op == "ReadFile":
        read_file(path)
    elif op == "WriteFile":
        write_file(path)
    elif op == "ListFiles":
        list_files(path)
    elif op == "Stat":
        stat_path(path)
    elif op == "MakeDirectory":
        make_directory(path, bool(args.get("parents", True)))
    elif op == "Remove":
        remove(path, bool(args.get("recursive", False)))
    elif op == "Watch":
        timeout = args.get("timeout_secs")
        watch(path, bool(args.get("recursive")), args.get("filter"), timeout)
    else:
        _fail("InvalidCommand", f"unknown command {op!r}")


def main(argv: list[str]) -> int:
    try:
        if len(argv) != 1:
            _fail("InvalidCommand", "usage: modal-sandbox-fs-tools '<command json>'")
        try:
            command = json.loads(argv[0])
        except ValueError as exc:
            _fail("InvalidCommand", f"command is not JSON: {exc}")
        run(command)
    except FsError as err:
        sys.stdout.flush()
        payload = {"version": 1, "error_kind": err.kind, "message": err.message}
        sys.stderr.write(json.dumps(payload))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
