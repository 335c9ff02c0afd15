"""Conformance: ``sandbox.filesystem.*`` (Modal's fs-tools exec contract) via the real client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

modal = pytest.importorskip("modal")
from modal.exception import (  # noqa: E402
    NotFoundError,
    SandboxFilesystemDirectoryNotEmptyError,
    SandboxFilesystemIsADirectoryError,
    SandboxFilesystemNotADirectoryError,
    SandboxFilesystemNotFoundError,
    SandboxFilesystemPathAlreadyExistsError,
)


def test_write_read_roundtrip_creates_parents(make_sandbox: Any) -> None:
    sb = make_sandbox()
    fs = sb.filesystem
    fs.write_text("hello\n", "/tmp/a/b/hello.txt")
    assert fs.read_text("/tmp/a/b/hello.txt") == "hello\n"
    data = os.urandom(600_000)  # several stdin stream chunks
    fs.write_bytes(data, "/tmp/blob.bin")
    assert fs.read_bytes("/tmp/blob.bin") == data
    # the sandbox's own processes see the same files
    assert sb.exec("cat", "/tmp/a/b/hello.txt").stdout.read() == "hello\n"


def test_copy_to_and_from_local(make_sandbox: Any, tmp_path: Path) -> None:
    sb = make_sandbox()
    src = tmp_path / "src.txt"
    src.write_text("payload")
    sb.filesystem.copy_from_local(src, "/tmp/copied.txt")
    dst = tmp_path / "out" / "dst.txt"
    sb.filesystem.copy_to_local("/tmp/copied.txt", dst)
    assert dst.read_text() == "payload"


def test_list_stat_mkdir_remove(make_sandbox: Any) -> None:
    sb = make_sandbox()
    fs = sb.filesystem
    fs.make_directory("/tmp/d/sub")
    fs.write_text("12345", "/tmp/d/file.txt")
    entries = {e.name: e for e in fs.list_files("/tmp/d")}
    assert set(entries) == {"sub", "file.txt"}
    assert entries["sub"].is_dir() and entries["file.txt"].is_file()
    assert entries["file.txt"].size == 5 and entries["file.txt"].path == "/tmp/d/file.txt"
    info = fs.stat("/tmp/d/file.txt")
    assert info.size == 5 and info.permissions.isdigit()
    with pytest.raises(SandboxFilesystemDirectoryNotEmptyError):
        fs.remove("/tmp/d")
    fs.remove("/tmp/d", recursive=True)
    with pytest.raises(SandboxFilesystemNotFoundError):
        fs.stat("/tmp/d")


def test_errors_map_to_the_clients_exceptions(make_sandbox: Any) -> None:
    sb = make_sandbox()
    fs = sb.filesystem
    with pytest.raises(SandboxFilesystemNotFoundError):
        fs.read_text("/tmp/missing.txt")
    with pytest.raises(SandboxFilesystemIsADirectoryError):
        fs.read_bytes("/tmp")
    fs.write_text("x", "/tmp/plain")
    with pytest.raises(SandboxFilesystemNotADirectoryError):
        fs.list_files("/tmp/plain")
    with pytest.raises(SandboxFilesystemNotADirectoryError):
        fs.write_text("y", "/tmp/plain/child")
    with pytest.raises(SandboxFilesystemPathAlreadyExistsError):
        fs.make_directory("/tmp", create_parents=False)
    with pytest.raises(SandboxFilesystemNotFoundError):
        fs.make_directory("/tmp/no/such/parent", create_parents=False)
    with pytest.raises(SandboxFilesystemNotFoundError):
        fs.remove("/tmp/missing")


def test_host_root_is_the_sandboxs_own(make_sandbox: Any) -> None:
    """As on Modal the root is writable; the host's files never change."""
    sb = make_sandbox()
    path = "/etc/pytest-modal-sandbox-should-not-exist"
    sb.filesystem.write_text("inside", path)
    assert sb.filesystem.read_text(path) == "inside"
    assert not os.path.exists(path)
    sb.terminate(wait=True)
    assert not os.path.exists(path)


def test_filesystem_on_a_finished_sandbox_is_unavailable(make_sandbox: Any) -> None:
    sb = make_sandbox()
    sb.terminate(wait=True)
    with pytest.raises(NotFoundError, match="unavailable"):
        sb.filesystem.read_text("/etc/hostname")


def test_watch_reports_created_files(make_sandbox: Any) -> None:
    import threading

    from modal.types import FileWatchEventType

    sb = make_sandbox()
    sb.filesystem.make_directory("/tmp/w")
    seen = threading.Event()

    def keep_creating() -> None:  # until the watcher (started concurrently) reports one
        for i in range(100):
            if seen.wait(0.2):
                return
            sb.exec("touch", f"/tmp/w/new{i}").wait()

    writer = threading.Thread(target=keep_creating)
    writer.start()
    try:
        events = []
        for event in sb.filesystem.watch("/tmp/w", timeout=20):
            events.append(event)
            break
    finally:
        seen.set()
        writer.join()
    assert events and events[0].type == FileWatchEventType.Create
    assert events[0].paths[0].startswith("/tmp/w/new")


def test_spec_mounts_follow_changes_to_the_files_between_starts(
    emulator: Any, tmp_path: Path
) -> None:
    """The modal backend reuses a loaded mount only while its files are unchanged."""
    from pytest_modal_sandbox import SandboxSpec, start
    from pytest_modal_sandbox.backends import make_backend

    tree = tmp_path / "app"
    tree.mkdir()
    (tree / "v.txt").write_text("1")
    spec = SandboxSpec(mounts={"/srv/app": str(tree)})
    backend = make_backend("emulator", server_url=emulator.url)
    try:
        with start(spec, backend=backend) as sb:
            assert sb.exec("cat", "/srv/app/v.txt").stdout == "1"
        with start(spec, backend=backend) as sb:  # unchanged: the loaded mount again
            assert sb.exec("cat", "/srv/app/v.txt").stdout == "1"
        (tree / "v.txt").write_text("22")
        with start(spec, backend=backend) as sb:
            assert sb.exec("cat", "/srv/app/v.txt").stdout == "22"
    finally:
        backend.close()
