"""A sandbox's network: egress through slirp4netns, block_network, cidr_allowlist, peers, and
the host's loopback out of reach (as root, as CI runs)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import SANDBOX_PYTHON, run_python

from pytest_modal_sandbox.runtime import (
    InvalidConfig,
    LocalRuntime,
    LocalSandbox,
    SandboxConfig,
    peer_host,
)

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "    print(s.recv(16).decode() or 'connected')\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


def connect(sb: LocalSandbox, host: str, port: int) -> str:
    """What a client in ``sb`` gets from ``host:port``: the server's greeting or the error."""
    out = sb.exec([SANDBOX_PYTHON, "-c", CONNECT, host, str(port)], timeout=30)
    return out.stdout.decode().strip()


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    """Servers of this machine saying who they are: on its own address, and on 127.0.0.1."""
    socks = {}
    for name, host in (("host", peer_host()), ("loopback", "127.0.0.1"), ("any", "0.0.0.0")):
        s = socket.socket()
        s.bind((host, 0))
        s.listen(16)
        socks[name] = s

    def serve(name: str, s: socket.socket) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.sendall(name.encode())
            c.close()

    for name, s in socks.items():
        threading.Thread(target=serve, args=(name, s), daemon=True).start()
    yield {name: s.getsockname()[1] for name, s in socks.items()}
    for s in socks.values():
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the walls are tested as root, as CI runs")
def test_egress_by_default_and_never_the_hosts_loopback(
    rt: LocalRuntime, servers: dict[str, int]
) -> None:
    sb = rt.create(SandboxConfig())
    host = peer_host()
    assert connect(sb, host, servers["host"]) == "host"  # this machine, as any other
    assert connect(sb, host, servers["any"]) == "any"
    for gateway in ("10.0.2.2", "10.0.2.3", "127.0.0.1", host, "0.0.0.0"):
        # a service bound to the host's 127.0.0.1: by no address
        assert connect(sb, gateway, servers["loopback"]) != "loopback", gateway
    assert connect(sb, "10.0.2.2", servers["any"]) != "any"  # the gateway is not the host
    # root inside cannot widen its network: routes and addresses belong to the host side
    ip = sb.exec(["sh", "-c", "ip route add 1.2.3.0/24 dev eth0 || ip link set eth0 down"])
    assert ip.returncode != 0
    assert sb.exec(["cat", "/etc/resolv.conf"]).stdout == b"nameserver 10.0.2.3\n"  # slirp's


def test_block_network_is_loopback_only(rt: LocalRuntime, servers: dict[str, int]) -> None:
    sb = rt.create(SandboxConfig(block_network=True))
    assert "eth0" not in sb.exec(["cat", "/proc/net/dev"]).stdout.decode()
    assert connect(sb, peer_host(), servers["host"]) == "OSError"  # network unreachable
    assert sb.exec(["sh", "-c", "ls /proc/self/fd >/dev/null"]).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="egress needs /dev/net/tun; as root here")
def test_cidr_allowlist_narrows_egress(rt: LocalRuntime, servers: dict[str, int]) -> None:
    host = peer_host()
    allowed = rt.create(SandboxConfig(cidr_allowlist=[f"{host}/32", "fd00::/8"]))
    assert connect(allowed, host, servers["host"]) == "host"
    other = rt.create(SandboxConfig(cidr_allowlist=["198.51.100.0/24"]))
    assert connect(other, host, servers["host"]) == "OSError"
    assert allowed.exec(["ip", "route", "add", "default", "via", "10.0.2.2"]).returncode != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="egress needs /dev/net/tun; as root here")
def test_a_sandbox_reaches_another_through_its_peer_address(rt: LocalRuntime) -> None:
    server = (
        "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 8000)); s.listen()\n"
        "while True:\n    c, _ = s.accept(); c.sendall(b'db'); c.close()"
    )
    db = rt.create(SandboxConfig(command=[SANDBOX_PYTHON, "-c", server], ports=[8000]))
    deadline = time.monotonic() + 30
    while 8000 not in db.listening_ports():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    host, port = db.peer(8000)
    assert host == peer_host() and not host.startswith("127.")
    assert port == db.tunnel(8000)[1]
    app = rt.create(SandboxConfig(block_network=False))
    assert connect(app, host, port) == "db"
    assert connect(app, "127.0.0.1", port) == "ConnectionRefusedError"  # its own loopback
    with pytest.raises(Exception, match=r"port 8001 of sandbox .* was not declared"):
        db.peer(8001)


@pytest.mark.skipif(os.geteuid() != 0, reason="egress needs /dev/net/tun; as root here")
def test_the_network_stack_ends_with_the_keeper(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    slirps = _slirp_for(os.stat(f"/proc/{sb.init_pid}/ns/net").st_ino)
    assert len(slirps) == 1, "no slirp4netns attached"
    os.kill(sb._keeper.pid, signal.SIGKILL)  # the keeper's end of --exit-fd closes
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{slirps[0]}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{slirps[0]}")


def _slirp_for(netns_inode: int) -> list[int]:
    """slirp4netns processes attached to the network namespace with this inode."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[0].endswith(b"slirp4netns") and os.stat(argv[-3]).st_ino == netns_inode:
                found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cidr_allowlist": "10.0.0.0/8"}, "must be a list of CIDR strings"),
        ({"cidr_allowlist": ["10.0.0.0/33"]}, "'10.0.0.0/33' is not a CIDR"),
        ({"cidr_allowlist": [8]}, "8 is not a CIDR string"),
        ({"block_network": "yes"}, "block_network='yes': must be True or False"),
        ({"block_network": True, "cidr_allowlist": []}, "cannot be used with block_network"),
    ],
)
def test_bad_network_fields_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message) as info:
        SandboxConfig(**fields)  # type: ignore[arg-type]
    assert "SandboxConfig." in str(info.value)


FAILING_SLIRP = "#!/bin/sh\necho 'cannot attach: no luck' >&2\nexit 1\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="egress needs /dev/net/tun; as root here")
def test_a_network_stack_that_fails_fails_the_start_with_what_it_said(
    state_dir: Path, tmp_path: Path
) -> None:
    """slirp4netns that cannot attach fails the sandbox's start with its own words, whether
    the keeper started it or a spare keeper did before the sandbox was asked for (the second
    create); a sandbox without egress still starts, and nothing is left behind."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "slirp4netns").write_text(FAILING_SLIRP)
    (bin_dir / "slirp4netns").chmod(0o755)
    code = (
        "import sys\n"
        "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "rt = LocalRuntime(sys.argv[1])\n"
        "for config in [SandboxConfig(), SandboxConfig(), SandboxConfig(block_network=True)]:\n"
        "    try:\n"
        "        sb = rt.create(config)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "    else:\n"
        "        print('started', sb.exec(['true']).returncode)\n"
        "        sb.terminate(wait=True)\n"
    )
    path = f"{bin_dir}:{os.environ['PATH']}"
    done = run_python(code, str(state_dir), env={"PATH": path})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines[:2]:
        assert line.startswith("SandboxStartError "), line
        assert "slirp4netns exited before attaching the sandbox's network" in line
        assert "it said: cannot attach: no luck" in line
    assert lines[2] == "started 0"


@pytest.mark.skipif(os.geteuid() != 0, reason="egress needs /dev/net/tun; as root here")
@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 to read the device")
def test_eth0_is_a_persistent_tap_so_its_removal_is_not_in_terminate(rt: LocalRuntime) -> None:
    """eth0 is made persistent before slirp4netns attaches (egress.make_device): a device that
    went with slirp4netns's file would be unregistered in its exit, inside every terminate."""
    sb = rt.create(SandboxConfig())
    shown = subprocess.run(
        ["nsenter", f"--net=/proc/{sb.init_pid}/ns/net", "ip", "-d", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tun type tap" in shown and "persist on" in shown, shown
