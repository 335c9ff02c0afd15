"""Conformance: tunnels (``encrypted_ports`` / ``unencrypted_ports``) reached from the host.

Every tunnel port serves TLS (a certificate for 127.0.0.1/localhost signed by the emulator's
own CA, ``MODAL_EMULATOR_CA_FILE``) *and* plain bytes, so ``Tunnel.url`` (always https) works
with that CA, and ``http://`` to the same host:port works with no CA at all.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

modal = pytest.importorskip("modal")

HTTP = 'echo "$WHO" > /tmp/who; exec python3 -m http.server {port} --bind 127.0.0.1 -d /tmp'


def web_sandbox(make_sandbox: Any, port: int = 8000, who: str = "web", **kwargs: Any) -> Any:
    """A sandbox serving its /tmp over HTTP on ``port``; /tmp/who holds ``who``."""
    sb = make_sandbox(
        "sh",
        "-c",
        HTTP.format(port=port),
        readiness_probe=modal.Probe.with_tcp(port, interval_ms=50),
        env={"WHO": who},
        **kwargs,
    )
    sb.wait_until_ready(timeout=60)
    return sb


def test_encrypted_port_https_with_the_ca_and_plain_http(make_sandbox: Any, emulator: Any) -> None:
    sb = web_sandbox(make_sandbox, encrypted_ports=[8000])
    tunnel = sb.tunnels()[8000]
    assert tunnel.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(emulator.ca_file))
    with urllib.request.urlopen(tunnel.url + "/who", context=ctx, timeout=30) as resp:
        assert resp.status == 200
    host, port = tunnel.tls_socket
    with urllib.request.urlopen(f"http://{host}:{port}/who", timeout=30) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(tunnel.url, context=ssl.create_default_context(), timeout=30)


def test_unencrypted_port_gives_a_tcp_socket(make_sandbox: Any) -> None:
    sb = web_sandbox(make_sandbox, port=9000, unencrypted_ports=[9000])
    tunnel = sb.tunnels()[9000]
    host, port = tunnel.tcp_socket
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(b"GET /who HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 200")


def test_same_port_in_many_sandboxes_and_tunnels_from_a_fresh_handle(
    make_sandbox: Any, client: Any
) -> None:
    sandboxes = [
        web_sandbox(make_sandbox, who=str(i), encrypted_ports=[8000], h2_ports=[8443])
        for i in range(3)
    ]
    seen = set()
    for sb in sandboxes:
        fresh = modal.Sandbox.from_id(sb.object_id, client=client)  # no cached tunnels
        tunnels = fresh.tunnels()
        assert set(tunnels) == {8000, 8443}
        host, port = tunnels[8000].tls_socket
        with urllib.request.urlopen(f"http://{host}:{port}/who", timeout=30) as resp:
            seen.add(resp.read())
    assert len({sb.object_id for sb in sandboxes}) == 3
    assert seen == {b"0\n", b"1\n", b"2\n"}  # three sandboxes behind one container port


@pytest.mark.slow  # holds the sandbox busy for several idle_timeouts
def test_open_tunnel_connection_counts_as_activity(make_sandbox: Any) -> None:
    sb = web_sandbox(make_sandbox, encrypted_ports=[8000], idle_timeout=1)
    host, port = sb.tunnels()[8000].tls_socket
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\n")  # request left incomplete
        end = time.monotonic() + 3
        while time.monotonic() < end:  # hold it open for 3 idle_timeouts
            time.sleep(0.2)
        assert sb.poll() is None
    with pytest.raises(modal.exception.SandboxTimeoutError):
        sb.wait()


def test_alpn_offers_h2_only_on_h2_ports(make_sandbox: Any, emulator: Any) -> None:
    import shutil
    import subprocess

    both = "python3 -m http.server 8001 --bind 127.0.0.1 -d /tmp & " + HTTP.format(port=8000)
    sb = make_sandbox(
        "sh",
        "-c",
        both,
        env={"WHO": "web"},
        encrypted_ports=[8000],
        h2_ports=[8001],
        readiness_probe=modal.Probe.with_exec(
            "sh",
            "-c",
            "grep -q ':1F40 .* 0A ' /proc/net/tcp && grep -q ':1F41 .* 0A ' /proc/net/tcp",
        ),
    )
    sb.wait_until_ready(timeout=60)
    tunnels = sb.tunnels()
    ctx = ssl.create_default_context(cafile=str(emulator.ca_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    negotiated = {}
    for port in (8000, 8001):
        host, tunnel_port = tunnels[port].tls_socket
        with (
            socket.create_connection((host, tunnel_port), timeout=30) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            negotiated[port] = tls.selected_alpn_protocol()
    assert negotiated == {8000: "http/1.1", 8001: "h2"}
    if shutil.which("curl"):  # an h2-capable client against an HTTP/1.1 server
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(emulator.ca_file), tunnels[8000].url + "/who"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"web\n"


def test_network_access_of_the_create_request_is_applied(make_sandbox: Any) -> None:
    """Egress by default; ``block_network`` leaves loopback only; ``outbound_cidr_allowlist``
    routes only its networks (the runtime's slirp4netns, tests/runtime/test_runtime_network)."""

    def routes(sb: Any) -> str:
        proc = sb.exec("cat", "/proc/net/route")
        proc.wait()
        return str(proc.stdout.read())

    open_ = make_sandbox()
    assert "eth0\t00000000\t0202000A" in routes(open_)  # default via 10.0.2.2
    blocked = make_sandbox(block_network=True)
    assert "eth0" not in routes(blocked)
    allow = make_sandbox(outbound_cidr_allowlist=["198.51.100.0/24"])
    table = routes(allow)
    assert "00000000\t0202000A" not in table  # no default route
    assert "eth0\t006433C6\t0202000A" in table  # 198.51.100.0 via 10.0.2.2
    with pytest.raises(modal.exception.InvalidError, match="not a CIDR"):
        make_sandbox(outbound_cidr_allowlist=["not-a-cidr"])
