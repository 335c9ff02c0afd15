"""Unit tests of the volume store (``volumes.py``): commits merge a mount's changes, reloads
bring others', and paths never leave a volume.  Plain directories, no sandbox."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from modal_proto import api_pb2

from pytest_modal_sandbox.emulator.rpc_error import RpcError
from pytest_modal_sandbox.emulator.volumes import Volume, VolumeStore, WorkingCopy

CREATE = api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING
V0 = api_pb2.VOLUME_FS_VERSION_UNSPECIFIED


def new_volume(store: VolumeStore, name: str = "v") -> Volume:
    vol, created = store.get_or_create(name, "", CREATE, V0)
    assert created
    return vol


def put(store: VolumeStore, vol: Volume, path: str, data: bytes) -> None:
    store.put_files(vol, [(path, 0o644, lambda: data)], overwrite=True)


def mount(store: VolumeStore, vol: Volume, key: str, sub_path: str = "") -> WorkingCopy:
    return store.checkout(vol, key, f"/mnt/{key}", sub_path, False)


def test_commits_merge_changes_file_by_file_last_writer_wins(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    vol = new_volume(store)
    put(store, vol, "shared.txt", b"v0")
    put(store, vol, "keep.txt", b"keep")
    a, b = mount(store, vol, "a"), mount(store, vol, "b")
    (a.path / "a.txt").write_text("from a")
    (a.path / "shared.txt").write_text("a wrote")
    (b.path / "b.txt").write_text("from b")
    os.remove(b.path / "keep.txt")
    store.commit(a)
    store.commit(b)  # b did not touch shared.txt: a's write survives b's commit
    assert (vol.data / "shared.txt").read_text() == "a wrote"
    assert (vol.data / "a.txt").read_text() == "from a"
    assert (vol.data / "b.txt").read_text() == "from b"
    assert not (vol.data / "keep.txt").exists()  # b's removal is a change too
    (b.path / "shared.txt").write_text("b wrote last")
    store.commit(b)
    assert (vol.data / "shared.txt").read_text() == "b wrote last"


def test_a_reload_shows_the_committed_state_and_keeps_own_changes(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    vol = new_volume(store)
    a, b = mount(store, vol, "a"), mount(store, vol, "b")
    (a.path / "d").mkdir()
    (a.path / "d" / "x.txt").write_text("x")
    store.commit(a)
    assert not (b.path / "d").exists()  # not before a reload
    (b.path / "mine.txt").write_text("mine")
    store.reload(b)
    assert (b.path / "d" / "x.txt").read_text() == "x"
    assert (b.path / "mine.txt").read_text() == "mine"  # committed by the reload
    assert (vol.data / "mine.txt").exists()


def test_sub_path_mounts_commit_into_their_subtree(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    vol = new_volume(store)
    wc = mount(store, vol, "s", sub_path="/deep/er")
    (wc.path / "f").write_text("f")
    store.release(wc)  # the last commit, then the working copy goes
    assert (vol.data / "deep" / "er" / "f").read_text() == "f"
    assert not wc.path.exists()


def test_paths_stay_inside_the_volume(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path / "vols")
    vol = new_volume(store)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    wc = mount(store, vol, "w")
    os.symlink(str(outside), wc.path / "escape")
    store.commit(wc)  # the link is committed as a link, never followed
    assert os.readlink(vol.data / "escape") == str(outside)
    with pytest.raises(RpcError, match="out of the volume"):
        store.file(vol, "escape/secret")
    with pytest.raises(RpcError, match="out of the volume"):
        put(store, vol, "escape/new", b"x")
    assert not (outside / "new").exists()
    assert store.list_files(vol, "../..", recursive=False)[0].path == "escape"  # the root


def test_volumes_persist_and_names_are_per_environment(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    vol = new_volume(store, "kept")
    put(store, vol, "f", b"data")
    eph, _ = store.get_or_create("", "", api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL, V0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    meta = json.loads((eph.root / "meta.json").read_text())
    (eph.root / "meta.json").write_text(json.dumps({**meta, "owner": dead.pid}))
    again = VolumeStore(tmp_path)  # a later emulator on the same state dir
    found, created = again.get_or_create("kept", "main", CREATE, V0)
    assert not created and found.id == vol.id
    assert (found.data / "f").read_bytes() == b"data"
    with pytest.raises(RpcError, match="not found"):
        again.get(eph.id)  # an ephemeral volume does not outlive its emulator
    other, created = again.get_or_create("kept", "dev", CREATE, V0)
    assert created and other.id != vol.id
    with pytest.raises(RpcError, match="implements v1 volumes"):
        again.get_or_create("new", "", CREATE, api_pb2.VOLUME_FS_VERSION_V2)


def test_two_emulators_share_a_volume_directory(tmp_path: Path) -> None:
    """The default directory is per user: concurrent emulators see one registry, and one
    starting never clears another's working copies or ephemeral volumes."""
    one = VolumeStore(tmp_path)
    vol = new_volume(one, "shared")
    wc = mount(one, vol, "sb-1-0")
    eph, _ = one.get_or_create("", "", api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL, V0)
    two = VolumeStore(tmp_path)  # a second emulator while the first runs (same pid here)
    assert wc.path.is_dir() and two.get(eph.id).id == eph.id
    found, created = two.get_or_create("shared", "", CREATE, V0)
    assert not created and found.id == vol.id
    later = new_volume(two, "later")
    assert one.get(later.id).name == "later"  # made by the other: found on disk
    assert "later" in [v.name for v in one.named("", 0, 0)]
    two.delete(vol.id)
    with pytest.raises(RpcError, match="not found"):
        one.get(vol.id)
