"""Sandboxes whose / is a private writable view of a shared, read-only image root."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from runtime_helpers import build_busybox_root

from pytest_modal_sandbox.runtime import InvalidConfig, LocalRuntime, SandboxConfig
from pytest_modal_sandbox.runtime.rootfs import MODE_ENV

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (busybox-static)")


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                digest = os.readlink(path)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest = "dir"
            out[str(path.relative_to(root))] = (st.st_mode, digest)
    return out


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_root(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture(params=["overlay", "copy"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "overlay" and os.geteuid() != 0:
        pytest.skip("overlayfs roots need root")
    monkeypatch.setenv(MODE_ENV, request.param)
    return str(request.param)


def test_runs_in_a_private_writable_view_of_the_image(
    rt: LocalRuntime, image_root: Path, mode: str
) -> None:
    before = snapshot(image_root)
    sb = rt.create(SandboxConfig(rootfs=str(image_root), workdir="/app", hostname="img"))
    assert sb._meta["rootfs_mode"] == mode
    assert sb.exec(["test", "-e", "/usr/bin/python3"]).returncode == 1  # not the host's root
    assert sb.exec(["cat", "data.txt"]).stdout == b"from the image\n"  # workdir keeps content
    assert sb.exec(["sh", "-c", "echo mine > data.txt; echo x > /etc/new; cat data.txt"]).stdout
    assert sb.exec(["cat", "/etc/new"]).stdout == b"x\n"
    hosts = sb.exec(["cat", "/etc/hosts"]).stdout.decode()
    assert "localhost" in hosts and "img" in hosts
    assert sb.exec(["cat", "/etc/resolv.conf"]).stdout == b"nameserver 10.0.2.3\n"  # slirp's
    assert sb.exec(["hostname"]).stdout == b"img\n"
    assert sb.exec(["cat", "/proc/1/comm"]).stdout == b"bwrap\n"
    other = rt.create(SandboxConfig(rootfs=str(image_root), workdir="/app"))
    assert other.exec(["cat", "data.txt"]).stdout == b"from the image\n"  # private per sandbox
    assert other.exec(["test", "-e", "/etc/new"]).returncode == 1
    sb.terminate(wait=True)
    other.terminate(wait=True)
    assert snapshot(image_root) == before  # the shared root was never written to
    for leftover in ("root", "upper", "ovl-work", "work"):
        assert not (sb.state_dir / leftover).exists()


def test_exec_rules_are_unchanged_in_an_image(
    rt: LocalRuntime, image_root: Path, mode: str
) -> None:
    sb = rt.create(SandboxConfig(rootfs=str(image_root), env={"A": "1"}))
    assert sb.exec(["no-such-program"]).returncode == 127
    assert sb.exec(["sh", "-c", "kill -TERM $$"]).returncode == 143
    assert sb.exec(["sh", "-c", 'echo "$A$B"'], env={"B": "2"}).stdout == b"12\n"
    out = sb.exec(["sleep", "30"], timeout=0.3)
    assert out.timed_out
    assert sb.poll() is None  # the default entrypoint (the image's sleep) keeps it running


def test_tunnel_to_a_server_in_the_image(rt: LocalRuntime, image_root: Path, mode: str) -> None:
    sb = rt.create(
        SandboxConfig(
            command=["httpd", "-f", "-p", "8000", "-h", "/www"],
            rootfs=str(image_root),
            ports=[8000],
        )
    )
    address = sb.tunnel(8000)
    deadline = time.monotonic() + 30
    while True:
        data = b""
        try:
            with socket.create_connection(address, timeout=10) as c:
                c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                while chunk := c.recv(65536):
                    data += chunk
        except ConnectionResetError:  # httpd not listening yet: the tunnel dropped us
            pass
        if data or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert data.startswith(b"HTTP/1.") and data.endswith(b"served from the image\n")


def test_timeout_in_an_image(rt: LocalRuntime, image_root: Path, mode: str) -> None:
    sb = rt.create(SandboxConfig(rootfs=str(image_root), timeout=0.5))
    st = sb.wait(30)
    assert st is not None and st.kind == "timeout"
    assert not (sb.state_dir / "root").exists()


def test_rootfs_that_overlayfs_cannot_name_is_copied(rt: LocalRuntime, tmp_path: Path) -> None:
    odd = build_busybox_root(tmp_path / "a,b")
    sb = rt.create(SandboxConfig(rootfs=str(odd)))
    assert sb._meta["rootfs_mode"] == "copy"
    assert sb.exec(["cat", "/app/data.txt"]).stdout == b"from the image\n"


def test_missing_rootfs_is_a_config_error(rt: LocalRuntime, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="rootfs"):
        rt.create(SandboxConfig(rootfs=str(tmp_path / "nope")))


def test_a_root_bubblewrap_cannot_set_up_is_a_start_error(
    rt: LocalRuntime, tmp_path: Path, state_dir: Path, mode: str
) -> None:
    from pytest_modal_sandbox.errors import SandboxStartError

    broken = build_busybox_root(tmp_path / "broken")
    shutil.rmtree(broken / "etc")
    (broken / "etc").write_text("a file where /etc should be a directory")
    with pytest.raises(SandboxStartError, match=r"failed to start: bwrap: .*etc"):
        rt.create(SandboxConfig(rootfs=str(broken)))
    assert list(state_dir.glob("sb-*")) == []  # nothing left behind


def test_mounts_are_private_writable_views_of_the_users_files(
    rt: LocalRuntime, image_root: Path, mode: str, tmp_path: Path
) -> None:
    """A directory (overlaid, or copied in copy mode) and a file (copied), nested in each
    other: writable inside, and the user's files are never written."""
    user = tmp_path / "user"
    tree = user / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    conf = user / "app.ini"
    conf.write_text("k=v\n")
    before = snapshot(user)
    mounts = {"/srv/app": str(tree), "/srv/app/pkg/app.ini": str(conf)}
    sb = rt.create(SandboxConfig(rootfs=str(image_root), mounts=mounts))
    files = ["/srv/app/pkg/mod.py", "/srv/app/pkg/app.ini"]
    assert sb.exec(["cat", *files]).stdout == b"x = 1\nk=v\n"
    script = "echo y > /srv/app/pkg/mod.py; echo n > /srv/app/new; echo w >> /srv/app/pkg/app.ini"
    assert sb.exec(["sh", "-c", script]).returncode == 0
    assert sb.exec(["cat", *files, "/srv/app/new"]).stdout == b"y\nk=v\nw\nn\n"
    overlaid = sb.exec(["sh", "-c", "grep -c ' /srv/app overlay' /proc/mounts"]).stdout
    assert overlaid == (b"1\n" if mode == "overlay" else b"0\n")
    sb.terminate(wait=True)
    assert snapshot(user) == before
    with pytest.raises(InvalidConfig, match=r"mounts.*not a file or directory"):
        SandboxConfig(mounts={"/srv/x": str(user / "missing")})
