"""What a sandbox can see and touch: namespaces, host files, ports."""

from __future__ import annotations

from runtime_helpers import SANDBOX_PYTHON

from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig


def test_hostname_and_pid_namespace(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(hostname="web-1"))
    assert sb.exec(["hostname"]).stdout == b"web-1\n"
    assert b"web-1" in sb.exec(["cat", "/etc/hosts"]).stdout
    assert sb.exec(["cat", "/proc/1/comm"]).stdout == b"bwrap\n"  # PID 1, like dumb-init
    pids = sb.exec(["sh", "-c", "ls -d /proc/[0-9]*"]).stdout.split()
    assert len(pids) < 10  # only the sandbox's own processes are visible
    default = rt.create(SandboxConfig())
    assert default.exec(["hostname"]).stdout.decode().strip() == default.id.lower()


def test_network_namespace_is_private(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(block_network=True))  # egress: test_runtime_network.py
    out = sb.exec(["cat", "/proc/net/dev"]).stdout.decode()
    interfaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_four_sandboxes_listen_on_the_same_port(rt: LocalRuntime) -> None:

    server = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 8000)); s.listen(); print('listening', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()\n"
    )
    sandboxes = [
        rt.create(SandboxConfig(command=[SANDBOX_PYTHON, "-c", server, f"sb{i}"], ports=[8000]))
        for i in range(4)
    ]
    client = (
        "import socket, time\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        c = socket.create_connection(('127.0.0.1', 8000)); break\n"
        "    except OSError: time.sleep(0.05)\n"
        "print(c.recv(100).decode())\n"
    )
    for i, sb in enumerate(sandboxes):
        assert sb.exec([SANDBOX_PYTHON, "-c", client]).stdout == f"sb{i}\n".encode()
        assert sb.poll() is None
