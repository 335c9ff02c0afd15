"""Filesystem snapshots of local sandboxes (``runtime/snapshot.py``): what a sandbox wrote -
files, deletions, ``/tmp`` - comes back in clones, over an image root (stacked layers, chained
snapshots) and over the host's root; the image is never copied, clones are independent."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from runtime_helpers import build_busybox_root

from pytest_modal_sandbox.errors import SandboxError
from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
from pytest_modal_sandbox.runtime.rootfs import MODE_ENV

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None or os.geteuid() != 0,
    reason="needs busybox (busybox-static) and root (overlayfs over an image root)",
)
WRITE = "mkdir -p /srv/db && echo seeded > /srv/db/data && echo t > /tmp/t && rm {gone}"
READ = "cat /srv/db/data /tmp/t; ls /srv/db; test -e {gone} && echo {gone} is back || true"


def _sh(sb: object, script: str) -> str:
    done = sb.exec(["sh", "-c", script])  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    return str(done.stdout.decode())


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_root(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.mark.parametrize("where", ["image", "host"])
def test_clones_start_with_what_the_sandbox_wrote(
    rt: LocalRuntime, image_root: Path, tmp_path: Path, where: str
) -> None:
    rootfs = str(image_root) if where == "image" else None
    gone = "/app/data.txt" if where == "image" else "/etc/issue"
    assert rootfs is None or os.path.exists(f"{rootfs}{gone}")
    sb = rt.create(SandboxConfig(rootfs=rootfs))
    _sh(sb, WRITE.format(gone=gone))
    layers = sb.snapshot(tmp_path / "snap-a" / "layers")
    _sh(sb, "echo later > /srv/db/later")  # after the snapshot: not in it
    size = sum(p.stat().st_size for p in (tmp_path / "snap-a").rglob("*") if p.is_file())
    assert size < 100_000  # what it wrote, not the image
    first = rt.create(SandboxConfig(rootfs=rootfs, layers=layers))
    second = rt.create(SandboxConfig(rootfs=rootfs, layers=layers))
    assert _sh(first, READ.format(gone=gone)) == "seeded\nt\ndata\n"
    _sh(first, "echo changed > /srv/db/data && echo more > /tmp/u")
    assert _sh(second, "cat /srv/db/data") == "seeded\n"  # independent
    # a snapshot of a clone holds both: stacked over an image, one layer over the host
    chained = first.snapshot(tmp_path / "snap-b" / "layers")
    assert len(chained) == (2 if where == "image" else 1)
    third = rt.create(SandboxConfig(rootfs=rootfs, layers=chained))
    assert _sh(third, "cat /srv/db/data /tmp/u") == "changed\nmore\n"
    if rootfs is not None:
        assert os.path.exists(f"{rootfs}{gone}")  # the image itself was never written


def test_a_copied_root_cannot_be_snapshotted(
    rt: LocalRuntime, image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODE_ENV, "copy")
    sb = rt.create(SandboxConfig(rootfs=str(image_root)))
    with pytest.raises(SandboxError, match="its root is a copy of the image"):
        sb.snapshot(tmp_path / "snap" / "layers")
    assert not (tmp_path / "snap" / "layers").exists()


def test_what_a_run_end_and_prune_remove(tmp_path: Path) -> None:
    from pytest_modal_sandbox.runtime.snapshot import remove, take

    def fake(run: str, kept: bool) -> str:
        name = f"snap-{run}-{'kept' if kept else 'not'}"
        take(
            tmp_path, name, lambda d: (d.mkdir(parents=True), ())[1], run=run, kept=kept, source=""
        )
        return name

    a, a_kept, b, c = fake("a", False), fake("a", True), fake("b", False), fake("c", False)
    assert remove(tmp_path, run="a") == [a]  # the run's end: not what it kept
    in_use = [str(tmp_path / c / "layers" / "0")]  # a sandbox runs on c
    assert remove(tmp_path, in_use=in_use, live=lambda run: run == "b", dry_run=True) == [a_kept]
    assert remove(tmp_path, in_use=in_use, live=lambda run: run == "b") == [a_kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == [b, c]
