"""Looking into a sandbox from the host (PID 1, its sockets, helpers in its namespaces), and the
build mode (a writable root kept in place, the host's network) that image builds use."""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import BUSYBOX, build_busybox_root, build_sleep_only_root

from pytest_modal_sandbox.runtime import (
    InvalidArgument,
    LocalRuntime,
    LocalSandbox,
    SandboxConfig,
    SandboxNotFound,
)

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (busybox-static)")

# A helper run by enter.py: module-level imports on the host, main() inside the sandbox.
HELPER = textwrap.dedent(
    """
    import json
    import os
    import sys

    def main(args):
        if args[0] == "write":
            with open(args[1], "w") as f:
                f.write(args[2])
        listing = sorted(os.listdir("/"))
        with open(args[1] if args[0] == "read" else "/etc/passwd") as f:
            text = f.read()
        sys.stdout.write(json.dumps({"root": listing, "text": text, "cwd": os.getcwd()}))
        return 3
    """
)


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    path = tmp_path / "helper.py"
    path.write_text(HELPER)
    return path


def run_helper(sb: LocalSandbox, helper: Path, *args: str) -> tuple[int, str, str]:
    argv, fds = sb.helper_command(helper, args)
    try:
        done = subprocess.run(
            argv,
            pass_fds=list(fds.values()),
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
    finally:
        for fd in fds.values():
            os.close(fd)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(params=["busybox", "no-shell"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(str(request.param)) / "rootfs"
    if request.param == "busybox":
        return build_busybox_root(root)
    return build_sleep_only_root(root)


def test_a_helper_runs_in_the_sandbox_root_with_the_hosts_interpreter(
    rt: LocalRuntime, image: Path, helper: Path
) -> None:
    import json

    sb = rt.create(SandboxConfig(rootfs=str(image)))
    assert sb.exec(["python3", "-c", "1"]).returncode == 127  # no Python in there
    code, out, err = run_helper(sb, helper, "write", "/tmp/from-helper", "hello")
    assert code == 3, err
    seen = json.loads(out)
    assert seen["cwd"] == "/"
    assert "bin" in seen["root"] and "usr" not in seen["root"]  # the image's /, not the host's
    assert seen["text"].startswith("root:x:0:0:")  # the image's /etc/passwd
    assert not Path("/tmp/from-helper").exists()  # the sandbox's private /tmp, not the host's
    code, out, _ = run_helper(sb, helper, "read", "/tmp/from-helper")
    assert json.loads(out)["text"] == "hello"
    if (image / "bin" / "cat").exists():
        assert sb.exec(["cat", "/tmp/from-helper"]).stdout == b"hello"


def test_helper_in_a_host_root_sandbox_sees_its_private_mounts(
    rt: LocalRuntime, helper: Path
) -> None:
    import json

    sb = rt.create(SandboxConfig(workdir="/srv/app"))
    assert sb.exec(["sh", "-c", "echo in-sandbox > /tmp/x"]).returncode == 0
    code, out, err = run_helper(sb, helper, "read", "/tmp/x")
    assert code == 3, err
    assert json.loads(out)["text"] == "in-sandbox\n"


def test_namespaces_and_init_pid_of_a_finished_sandbox(rt: LocalRuntime, helper: Path) -> None:
    sb = rt.create(SandboxConfig())
    pid = sb.init_pid
    assert pid is not None and os.readlink(f"/proc/{pid}/ns/net") != os.readlink(
        "/proc/self/ns/net"
    )
    with pytest.raises(InvalidArgument, match="unknown namespace 'mount'"):
        sb.open_namespaces(["mount"])
    fds = sb.open_namespaces(["mnt", "net"])
    try:
        assert set(fds) >= {"mnt", "net"}
        assert os.readlink(f"/proc/self/fd/{fds['net']}") == os.readlink(f"/proc/{pid}/ns/net")
    finally:
        for fd in fds.values():
            os.close(fd)
    sb.terminate(wait=True)
    assert sb.init_pid is None
    with pytest.raises(SandboxNotFound, match="finished"):
        sb.helper_command(helper)
    with pytest.raises(SandboxNotFound, match="finished"):
        sb.listening_ports()


def test_listening_ports_need_no_tool_inside(rt: LocalRuntime, image: Path) -> None:
    if (image / "bin" / "httpd").exists():
        command = ["httpd", "-f", "-p", "8123"]
    else:  # no shell, no server: only the kernel's tables can tell (nothing listens)
        command = ["sleep", "1000"]
    sb = rt.create(SandboxConfig(command=command, rootfs=str(image), ports=[8123]))
    deadline = time.monotonic() + 30
    expected = {8123} if command[0] == "httpd" else set()
    while sb.listening_ports() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sb.listening_ports() == expected


# --- build mode ---------------------------------------------------------------------------


@pytest.fixture
def host_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on the host's 127.0.0.1 that records what each connection sends."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        server.close()
        thread.join(5)


def test_build_mode_changes_the_root_in_place_and_reaches_the_host_network(
    rt: LocalRuntime, tmp_path: Path, host_listener: tuple[int, list[bytes]]
) -> None:
    port, received = host_listener
    root = build_busybox_root(tmp_path / "build" / "rootfs")
    (root / "tmp").mkdir(mode=0o1777)
    step = (
        "echo built > /built && mkdir -p /opt/app && echo kept > /tmp/kept && "
        "cat /etc/resolv.conf > /resolv.seen && "
        f"echo from-the-build | nc 127.0.0.1 {port}"
    )
    sb = rt.create(
        SandboxConfig(
            command=["sh", "-c", step],
            rootfs=str(root),
            rootfs_writable=True,
            network=True,
            workdir="/opt/work",
        )
    )
    status = sb.wait(60)
    assert status is not None and status.kind == "success", sb.stderr_path.read_text()
    assert sb._meta["rootfs_mode"] == "in-place"
    assert (root / "built").read_text() == "built\n"  # kept after the sandbox ended
    assert (root / "tmp" / "kept").read_text() == "kept\n"  # /tmp is the image's, as in builds
    assert (root / "opt" / "work").is_dir()  # the workdir was created, as WORKDIR does
    assert received == [b"from-the-build\n"]  # the host's 127.0.0.1 was reachable
    assert (root / "resolv.seen").read_text() == Path("/etc/resolv.conf").read_text()
    isolated = rt.create(
        SandboxConfig(command=["sh", "-c", f"echo x | nc 127.0.0.1 {port}"], rootfs=str(root))
    )
    status = isolated.wait(60)
    assert status is not None and status.kind == "failure"  # an ordinary sandbox cannot
    assert received == [b"from-the-build\n"]
