"""Layer application on real files: whiteouts, links, modes, owners, and refused escapes."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_modal_sandbox.images import LayerError
from pytest_modal_sandbox.images.unpack import LayerApplier, remove_tree
from registry import (
    Entry,
    build_layer,
    device,
    directory,
    fifo,
    file,
    hardlink,
    needs_zstd,
    opaque,
    symlink,
    whiteout,
)


def unpack(
    tmp_path: Path,
    layers: Sequence[Sequence[Entry] | bytes],
    *,
    compression: str | None = "gzip",
    chown: bool | None = None,
) -> tuple[Path, LayerApplier]:
    root = tmp_path / "root"
    root.mkdir()
    applier = LayerApplier(root, chown=chown)
    for i, entries in enumerate(layers):
        blob, diff_id = build_layer(entries, compression)
        path = tmp_path / f"layer{i}"
        path.write_bytes(blob)
        applier.apply(path, diff_id=diff_id, name=f"layer{i}")
    applier.finish()
    return root, applier


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        [
            [
                directory("etc"),
                file("etc/a", "a"),
                file("etc/b", "b"),
                directory("etc/sub"),
                file("etc/sub/x", "x"),
                directory("opt"),
                file("opt/old1"),
                directory("opt/deep"),
                file("opt/deep/old2"),
            ],
            [
                whiteout("etc/a"),
                whiteout("etc/sub"),
                whiteout("nothing/there"),
                file("opt/new", "n"),
                opaque("opt"),
            ],  # opaque after this layer's own entry
            [file("etc/a", "again")],
        ],
    )
    assert tree(root) == {"etc", "etc/a", "etc/b", "opt", "opt/new"}
    assert (root / "etc/a").read_text() == "again"
    assert not (root / "nothing").exists()  # a whiteout creates nothing


def test_opaque_keeps_this_layers_nested_content(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        [
            [directory("d"), directory("d/keep"), file("d/keep/lower"), file("d/gone")],
            [file("d/keep/upper", "u"), opaque("d"), whiteout("d/keep")],
        ],
    )
    assert tree(root) == {"d", "d/keep", "d/keep/upper"}


def test_hard_links_symlinks_and_fifos(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        [
            [
                directory("bin"),
                file("bin/busybox", "#!", mode=0o755),
                hardlink("bin/sh", "bin/busybox"),
                symlink("bin/ls", "busybox"),
                symlink("abs", "/etc/passwd"),
                symlink("dangling", "nope"),
            ],
            [hardlink("bin/sh2", "./bin/sh"), fifo("run.fifo", mode=0o640)],
        ],
    )
    a, b, c = (os.lstat(root / p) for p in ("bin/busybox", "bin/sh", "bin/sh2"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert os.readlink(root / "bin/ls") == "busybox"
    assert os.readlink(root / "abs") == "/etc/passwd"  # kept verbatim, never followed
    assert os.readlink(root / "dangling") == "nope"
    assert stat.S_ISFIFO(os.lstat(root / "run.fifo").st_mode)
    assert stat.S_IMODE(os.lstat(root / "run.fifo").st_mode) == 0o640


def test_modes_and_read_only_directories(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        [
            [
                directory("ro", mode=0o555),
                file("ro/a"),
                file("suid", mode=0o4755),
                directory("sticky", mode=0o1777),
            ],
            [file("ro/b", "later layer writes into a 0555 dir")],
        ],
    )
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(root / "suid").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(root / "sticky").st_mode) == 0o1777
    assert (root / "ro/b").exists()
    remove_tree(root)
    assert not root.exists()


def test_replacing_a_symlink_never_writes_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    root, _ = unpack(
        tmp_path,
        [
            [symlink("target", str(outside)), directory("dir"), file("dir/f")],
            [file("target", "image content"), file("dir", "a file replaces the directory")],
        ],
    )
    assert outside.read_text() == "host file"
    assert (root / "target").read_text() == "image content"
    assert (root / "dir").is_file()


def test_in_root_symlinked_parents_are_followed_inside_the_root(tmp_path: Path) -> None:
    root, _ = unpack(
        tmp_path,
        [
            [
                directory("usr"),
                directory("usr/lib"),
                symlink("lib", "/usr/lib"),
                symlink("lib64", "usr/lib"),
            ],
            [file("lib/a.so", "a"), file("lib64/b.so", "b")],
        ],
    )
    assert (root / "usr/lib/a.so").read_text() == "a"
    assert (root / "usr/lib/b.so").read_text() == "b"
    assert os.path.islink(root / "lib")


def test_devices_are_skipped_and_reported(tmp_path: Path) -> None:
    root, applier = unpack(tmp_path, [[directory("dev"), device("dev/null", 1, 3)]])
    assert not (root / "dev/null").exists()
    assert applier.report.skipped == ["/dev/null (device 1:3)"]


def test_ownership_recorded_when_it_cannot_be_applied(tmp_path: Path) -> None:
    root, applier = unpack(
        tmp_path, [[file("owned", uid=1000, gid=2000), file("rootfile")]], chown=False
    )
    assert applier.report.owners == {"/owned": (1000, 2000)}
    assert os.lstat(root / "owned").st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_ownership_applied_as_root(tmp_path: Path) -> None:
    root, applier = unpack(
        tmp_path, [[file("owned", uid=1000, gid=2000, mode=0o4755), symlink("link", "owned")]]
    )
    st = os.lstat(root / "owned")
    assert (st.st_uid, st.st_gid) == (1000, 2000)
    assert stat.S_IMODE(st.st_mode) == 0o4755  # chown first, so setuid survives
    assert applier.report.owners == {}


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([file("/etc/passwd", "x")], "absolute path"),
        ([file("../escape", "x")], "escapes the image root"),
        ([file("a/../../escape", "x")], "escapes the image root"),
        ([symlink("up", "../../.."), file("up/escape", "x")], "out of the image root"),
        ([directory("d"), symlink("d/up", "../.."), file("d/up/escape")], "out of the image root"),
        ([hardlink("h", "../outside.txt")], "escapes the image root"),
        ([hardlink("h", "/etc/passwd")], "absolute path"),
        ([hardlink("h", "missing")], "does not exist"),
        ([directory("d"), hardlink("h", "d")], "hard link to directory"),
        ([file("f"), file("f/x")], "to be a directory"),
        ([symlink("loop", "loop"), file("loop/x")], "too many levels"),
    ],
)
def test_escapes_are_refused(tmp_path: Path, entries: list[Entry], fragment: str) -> None:
    (tmp_path / "outside.txt").write_text("host")
    before = tree(tmp_path)
    with pytest.raises(LayerError) as info:
        unpack(tmp_path, [entries])
    assert fragment in str(info.value)
    assert "layer0" in str(info.value)
    assert tree(tmp_path) - before <= {"root", "layer0"} | {
        p for p in tree(tmp_path) if p.startswith("root/")
    }
    assert (tmp_path / "outside.txt").read_text() == "host"
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("compression", [None, "gzip", pytest.param("zstd", marks=needs_zstd)])
def test_compressions(tmp_path: Path, compression: str | None) -> None:
    root, _ = unpack(tmp_path, [[file("hello", "world")]], compression=compression)
    assert (root / "hello").read_text() == "world"


def test_diff_id_is_verified(tmp_path: Path) -> None:
    blob, _ = build_layer([file("x", "y")])
    (tmp_path / "l").write_bytes(blob)
    (tmp_path / "root").mkdir()
    with pytest.raises(LayerError, match=r"unpacks to sha256:.*config says sha256:0000"):
        LayerApplier(tmp_path / "root").apply(
            tmp_path / "l", diff_id="sha256:" + "0" * 64, name="l"
        )


def test_corrupt_archives_are_layer_errors(tmp_path: Path) -> None:
    blob, _ = build_layer([file("x", "y" * 5000)])
    (tmp_path / "l").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "root").mkdir()
    with pytest.raises(LayerError, match="layer l"):
        LayerApplier(tmp_path / "root").apply(tmp_path / "l", diff_id=None, name="l")


@pytest.mark.skipif(os.geteuid() != 0, reason="xattrs are applied when unpacking as root")
def test_xattrs_applied_as_root(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        pytest.skip(f"no user xattrs on this file system: {exc}")
    info, data = file("tool", "x", mode=0o755)
    info.pax_headers = {
        "SCHILY.xattr.user.origin": "layer \xe9",
        "SCHILY.xattr.trusted.secret": "ignored",
    }
    root, _ = unpack(tmp_path, [[(info, data)]])
    assert os.getxattr(root / "tool", "user.origin") == "layer \xe9".encode()
    assert "trusted.secret" not in os.listxattr(root / "tool")
