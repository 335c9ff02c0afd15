"""Conformance: ``modal.Volume`` (v1) - by name, mounted with ``volumes=``, committed and
reloaded as Modal documents, and the client's file API (persistence across emulators on one
state dir: ``test_volume_store.py``).

The session emulator runs sandboxes on the host's root, read-only outside /tmp, /run and
/var/tmp, so mounts here are under /tmp (an image root takes any path: see
``test_emulator_images.py``).
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any

import pytest
from emulator_helpers import eventually

modal = pytest.importorskip("modal")
from modal.exception import ConflictError, InvalidError, NotFoundError  # noqa: E402
from modal.types import FileEntryType  # noqa: E402

pytestmark = pytest.mark.usefixtures("runtime_available")
BIG = 9 * 1024 * 1024  # two 8 MiB blocks to read; over 4 MiB: uploaded as a blob


@pytest.fixture
def volume(client: Any) -> Any:
    name = f"vol-{uuid.uuid4().hex[:8]}"
    vol = modal.Volume.from_name(name, create_if_missing=True, client=client)
    yield vol
    modal.Volume.objects.delete(name, client=client, allow_missing=True)


def paths(vol: Any, path: str = "/", recursive: bool = False) -> list[str]:
    return sorted(e.path for e in vol.listdir(path, recursive=recursive))


def test_names_lookup_list_rename_and_delete(client: Any) -> None:
    name = f"named-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFoundError):
        modal.Volume.from_name(name, client=client).hydrate()
    modal.Volume.objects.create(name, client=client)
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Volume.objects.create(name, client=client)
    modal.Volume.objects.create(name, client=client, allow_existing=True)
    vol = modal.Volume.from_name(name, client=client).hydrate()
    assert vol.object_id.startswith("vo-") and vol.info().name == name
    assert modal.Volume.from_id(vol.object_id, client=client).hydrate().name == name
    assert name in [v.name for v in modal.Volume.objects.list(client=client)]
    modal.Volume.rename(name, name + "-b", client=client)
    assert modal.Volume.from_name(name + "-b", client=client).hydrate().object_id == vol.object_id
    modal.Volume.objects.delete(name + "-b", client=client)
    assert name + "-b" not in [v.name for v in modal.Volume.objects.list(client=client)]
    with pytest.raises(NotFoundError):
        modal.Volume.from_name(name + "-b", client=client).hydrate()
    with pytest.raises(InvalidError, match="v1"):
        modal.Volume.from_name(name, create_if_missing=True, version=2, client=client).hydrate()


def test_file_api_upload_list_read_copy_remove(volume: Any) -> None:
    big = os.urandom(BIG)
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"hello"), "/docs/hello.txt")
        batch.put_file(io.BytesIO(big), "/big.bin")
    assert paths(volume) == ["big.bin", "docs"]
    assert paths(volume, recursive=True) == ["big.bin", "docs", "docs/hello.txt"]
    [entry] = volume.listdir("docs/hello.txt")
    assert (entry.type, entry.size) == (FileEntryType.FILE, 5)
    assert b"".join(volume.read_file("docs/hello.txt")) == b"hello"
    assert b"".join(volume.read_file("/big.bin")) == big  # downloaded block by block
    with pytest.raises(FileNotFoundError):
        b"".join(volume.read_file("missing.txt"))
    with pytest.raises(FileExistsError), volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"again"), "/docs/hello.txt")
    with volume.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"again"), "/docs/hello.txt")
    volume.copy_files(["docs/hello.txt"], "copy.txt")
    assert b"".join(volume.read_file("copy.txt")) == b"again"
    with pytest.raises(InvalidError, match="directory"):
        volume.remove_file("docs")
    volume.remove_file("docs", recursive=True)
    with pytest.raises(FileNotFoundError):
        volume.remove_file("docs/hello.txt")
    assert paths(volume) == ["big.bin", "copy.txt"]
    with pytest.raises(NotFoundError):  # ".." stops at the volume's root
        volume.listdir("../../etc")


def test_a_mount_sees_the_committed_state_and_commits_on_sync(
    make_sandbox: Any, volume: Any
) -> None:
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"seed\n"), "/seed.txt")
    # the entrypoint starts once the volume is mounted
    writer = make_sandbox(
        "sh",
        "-c",
        "cat /tmp/vol/seed.txt; echo one > /tmp/vol/one.txt; sleep 300",
        volumes={"/tmp/vol": volume},
    )
    reader = make_sandbox(volumes={"/tmp/vol": volume})
    assert eventually(lambda: writer.exec("test", "-f", "/tmp/vol/one.txt").wait() == 0)
    assert writer.exec("sync", "/tmp/vol").wait() == 0  # Modal's commit from a sandbox
    assert "one.txt" in paths(volume)
    # the reader mounted before that commit: it sees it only after a reload
    assert reader.exec("test", "-e", "/tmp/vol/one.txt").wait() == 1
    reader.exec("sh", "-c", "echo two > /tmp/vol/two.txt").wait()
    reader.reload_volumes()  # commits the reader's own change too
    assert reader.exec("cat", "/tmp/vol/one.txt").stdout.read() == "one\n"
    assert {"one.txt", "two.txt", "seed.txt"} <= set(paths(volume))
    writer.exec("rm", "/tmp/vol/seed.txt").wait()
    writer.terminate()  # its last changes are committed as it ends
    assert "seed.txt" not in paths(volume)
    with pytest.raises(RuntimeError, match="sync"):
        volume.commit()  # from outside any container


def test_background_commits(make_sandbox: Any, volume: Any) -> None:
    sb = make_sandbox(volumes={"/tmp/vol": volume})
    sb.exec("sh", "-c", "mkdir -p /tmp/vol/d && echo bg > /tmp/vol/d/bg.txt").wait()
    assert eventually(lambda: "d/bg.txt" in paths(volume, recursive=True))


def test_read_only_and_sub_path_mounts(make_sandbox: Any, volume: Any, client: Any) -> None:
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"inner\n"), "/sub/inner.txt")
    ro = make_sandbox(volumes={"/tmp/ro": volume.with_mount_options(read_only=True)})
    p = ro.exec("sh", "-c", "echo x > /tmp/ro/x.txt")
    assert p.wait() != 0 and "Read-only file system" in p.stderr.read()
    sub = make_sandbox(volumes={"/tmp/sub": volume.with_mount_options(sub_path="/sub")})
    assert sub.exec("cat", "/tmp/sub/inner.txt").stdout.read() == "inner\n"
    sub.exec("sh", "-c", "echo more > /tmp/sub/more.txt").wait()
    assert sub.exec("sync").wait() == 0
    assert b"".join(volume.read_file("sub/more.txt")) == b"more\n"


def test_an_unknown_volume_or_a_bad_mount_is_refused(make_sandbox: Any, client: Any) -> None:
    with modal.Volume.ephemeral(client=client) as vol:
        if os.geteuid() == 0:  # the host's root is a private copy-on-write view: mount anywhere
            srv = make_sandbox(volumes={"/srv-volume": vol})
            assert srv.exec("test", "-d", "/srv-volume").wait() == 0
            srv.terminate()
        else:  # the host's root is read-only to an ordinary user (docs/reference/local-walls.md)
            with pytest.raises(ConflictError, match=r"Read-only file system.*under /tmp"):
                make_sandbox(volumes={"/not-writable-here": vol})
        sb = make_sandbox(volumes={"/tmp/eph": vol})
        sb.exec("sh", "-c", "echo e > /tmp/eph/e.txt").wait()
        sb.exec("sync", "/tmp/eph/e.txt").wait()
        assert [e.path for e in vol.listdir("/")] == ["e.txt"]
