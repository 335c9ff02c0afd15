"""``--start-latency-ms``: create answers at once, the container runs that much later.

Two emulators: one whose containers start after 0.4 s (what waits, then works) and one whose
containers would start only after 10 minutes (what a sandbox is before its container runs:
listed, terminable, tunnels handed out, no runtime sandbox yet).  No test asserts a duration.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from emulator_helpers import Emu, own_emulator

modal = pytest.importorskip("modal")
from modal.exception import (  # noqa: E402
    ConflictError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)
from modal.exception import TimeoutError as ModalTimeoutError  # noqa: E402

pytestmark = pytest.mark.usefixtures("runtime_available")

SERVE = "exec python3 -m http.server {port} --bind 127.0.0.1 -d /tmp"


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """Containers start 0.4 s after their create."""
    yield from own_emulator(tmp_path_factory, start_latency_ms=400)


@pytest.fixture(scope="module")
def pending(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """Containers would start 10 minutes after their create: they stay pending."""
    yield from own_emulator(tmp_path_factory, start_latency_ms=600_000)


def test_exec_stdio_and_stdin_wait_for_the_container(slow: Emu) -> None:
    sb = slow.create("sh", "-c", "read line; echo got $line; echo err >&2")
    p = sb.exec("echo", "hi")  # sent at once; the router holds it until the container runs
    assert p.stdout.read() == "hi\n"
    assert p.wait() == 0
    sb.stdin.write(b"ping\n")
    sb.stdin.drain()
    assert sb.stdout.read() == "got ping\n"
    assert sb.stderr.read() == "err\n"
    assert sb.wait() is None and sb.returncode == 0


def test_no_extra_round_trip_for_exec(slow: Emu) -> None:
    """The create response already carries the task id and router access."""
    slow.create().terminate()  # the client's first create also fetches its auth token
    slow.proc.reset_stats()
    sb = slow.create()
    assert sb.exec("true").wait() == 0
    sb.terminate()
    rpcs = slow.rpcs()
    assert rpcs["control"] == {"SandboxCreateV2": 1, "SandboxTerminateV2": 1}
    assert rpcs["router"] == {"TaskExecStart": 1, "TaskExecWait": 1}


def test_readiness_includes_the_start(slow: Emu) -> None:
    sb = slow.create(
        "sh",
        "-c",
        SERVE.format(port=8000),
        readiness_probe=modal.Probe.with_tcp(8000, interval_ms=50),
        encrypted_ports=[8000],
    )
    sb.wait_until_ready(timeout=60)
    host, port = sb.tunnels()[8000].tls_socket
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=30) as resp:
        assert resp.status == 200


def test_encrypted_tunnels_come_with_create_unencrypted_ones_later(slow: Emu) -> None:
    slow.proc.reset_stats()
    enc = slow.create("sh", "-c", SERVE.format(port=8000), encrypted_ports=[8000])
    enc.tunnels()
    assert "SandboxGetTunnelsV2" not in slow.rpcs()["control"]
    plain = slow.create(
        "sh",
        "-c",
        SERVE.format(port=9000),
        unencrypted_ports=[9000],
        readiness_probe=modal.Probe.with_tcp(9000, interval_ms=50),
    )
    host, port = plain.tunnels(timeout=60)[9000].tcp_socket  # waits for the container
    assert slow.rpcs()["control"]["SandboxGetTunnelsV2"] == 1
    plain.wait_until_ready(timeout=60)
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert conn.recv(12).startswith(b"HTTP/1.0 200")


def test_a_held_connection_to_a_port_nobody_serves_is_closed(slow: Emu) -> None:
    """Made before the container runs, relayed once it does, and ended as the direct path
    ends it (a reset) - never left waiting for bytes that do not come."""
    sb = slow.create(encrypted_ports=[8000])  # nothing listens on 8000
    host, port = sb.tunnels()[8000].tls_socket
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert conn.recv(1) == b""
        except ConnectionResetError:
            pass  # as a direct connection would be


def test_a_pending_sandbox_is_listed_and_has_no_container_yet(pending: Emu) -> None:
    sb = pending.create(tags={"case": "listed"})
    listed = modal.Sandbox.list(
        app_id=pending.app.app_id, tags={"case": "listed"}, client=pending.client
    )
    assert [s.object_id for s in listed] == [sb.object_id]
    assert sb.poll() is None
    assert modal.Sandbox.from_id(sb.object_id, client=pending.client).poll() is None
    assert pending.runtime_sandboxes() == 0


def test_terminate_before_the_start(pending: Emu) -> None:
    sb = pending.create(encrypted_ports=[8000])
    host, port = sb.tunnels()[8000].tls_socket
    early = socket.create_connection((host, port), timeout=30)  # held: no container yet
    sb.terminate()
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137
    assert early.recv(1) == b""  # the held connection is closed with the sandbox
    early.close()
    assert pending.runtime_sandboxes() == 0  # it never started
    assert sb.stdout.read() == ""  # no output: it never ran
    with pytest.raises(ValueError):
        sb.stdin.write(b"x")
        sb.stdin.drain()


def test_deadlines_count_the_start(pending: Emu) -> None:
    sb = pending.create(readiness_probe=modal.Probe.with_tcp(8000), unencrypted_ports=[9000])
    with pytest.raises(ModalTimeoutError):
        sb.wait_until_ready(timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.tunnels(timeout=1)
    sb.terminate()
    with pytest.raises(ConflictError):
        sb.wait_until_ready(timeout=5)
