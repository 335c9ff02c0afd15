"""Tunnels: 127.0.0.1 listeners in the calling process forwarding into a sandbox's network."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.request

import pytest
from runtime_helpers import SANDBOX_PYTHON

from pytest_modal_sandbox.emulator.tls import TlsMaterial, make_tls_material
from pytest_modal_sandbox.errors import NotDeclaredError
from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
from pytest_modal_sandbox.runtime.netns import MODE_ENV

# Answers every connection with its own name, then echoes one line back.
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if sys.argv[2] == "6" else "0.0.0.0", 8000)); s.listen()
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[1].encode() + b"\\n")
    f = c.makefile("rb"); line = f.readline(); c.sendall(line); f.close(); c.close()
"""


def _server(name: str, family: str = "4") -> SandboxConfig:
    return SandboxConfig(command=[SANDBOX_PYTHON, "-c", SERVER, name, family], ports=[8000])


def _connect(address: tuple[str, int]) -> tuple[socket.socket, bytes]:
    """A connection through the tunnel and the server's greeting (retried until it listens)."""
    deadline = time.monotonic() + 30
    while True:
        c = socket.create_connection(address, timeout=10)
        greeting = c.makefile("rb").readline()
        if greeting:
            return c, greeting
        c.close()  # nothing listens inside yet: the tunnel closed us
        if time.monotonic() > deadline:
            raise ConnectionError(f"no server behind {address}")
        time.sleep(0.05)


def _talk(address: tuple[str, int], line: bytes = b"ping\n") -> tuple[bytes, bytes]:
    c, greeting = _connect(address)
    with c:
        c.sendall(line)
        return greeting, c.makefile("rb").readline()


def test_four_sandboxes_on_one_port_each_through_its_own_tunnel(rt: LocalRuntime) -> None:
    sandboxes = [rt.create(_server(f"sb{i}")) for i in range(4)]
    addresses = [sb.tunnel(8000) for sb in sandboxes]
    assert len(set(addresses)) == 4
    assert all(host == "127.0.0.1" for host, _ in addresses)
    for i, address in enumerate(addresses):
        assert _talk(address, f"hello {i}\n".encode()) == (
            f"sb{i}\n".encode(),
            f"hello {i}\n".encode(),
        )


def test_tunnel_is_made_once_per_port_and_needs_a_declared_port(rt: LocalRuntime) -> None:
    sb = rt.create(_server("x"))
    assert sb.tunnel(8000) == sb.tunnel(8000)
    with pytest.raises(NotDeclaredError, match=r"port 9000 .* declared ports: \[8000\]"):
        sb.tunnel(9000)


def test_tunnel_reaches_an_ipv6_only_server(rt: LocalRuntime) -> None:
    sb = rt.create(_server("six", "6"))
    assert _talk(sb.tunnel(8000))[0] == b"six\n"


def test_tunnel_through_the_relay_helper(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, "relay")  # the way non-root callers make in-sandbox sockets
    sb = rt.create(_server("relayed"))
    assert _talk(sb.tunnel(8000)) == (b"relayed\n", b"ping\n")
    rt.close()  # ends the relay helper (the leak check would see it otherwise)


def test_listener_closes_when_the_sandbox_ends(rt: LocalRuntime) -> None:
    sb = rt.create(_server("bye"))
    address = sb.tunnel(8000)
    _talk(address)
    sb.terminate(wait=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(address, timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "listener still accepting after the sandbox ended"
        time.sleep(0.05)


def test_open_tunnel_connection_counts_as_activity(rt: LocalRuntime) -> None:
    sb = rt.create(
        SandboxConfig(
            command=[SANDBOX_PYTHON, "-c", SERVER, "idle", "4"], ports=[8000], idle_timeout=0.5
        )
    )
    with sb.activity():  # alive while the server inside starts; then only the connection
        address = sb.tunnel(8000)
        conn, greeting = _connect(address)
    with conn:
        assert greeting == b"idle\n"
        time.sleep(1.5)  # three idle periods with the connection open
        assert sb.poll() is None
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A throwaway CA and a server certificate for 127.0.0.1 (the emulator's own maker)."""
    return make_tls_material(tmp_path_factory.mktemp("tls"))


def test_tls_or_plain_on_one_port(rt: LocalRuntime, tls: TlsMaterial) -> None:
    server_ctx = tls.server_context()
    web = "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port=8000, bind='0.0.0.0')"
    sb = rt.create(SandboxConfig(command=[SANDBOX_PYTHON, "-c", web], ports=[8000], workdir="/srv"))
    sb.exec(["sh", "-c", "echo secret-page > /srv/index.txt"])
    host, port = sb.tunnel(8000, tls=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(tls.ca_file))

    def fetch(url: str, **kw: object) -> bytes:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10, **kw) as r:  # type: ignore[arg-type]
                    return bytes(r.read())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    assert fetch(f"https://{host}:{port}/index.txt", context=client_ctx) == b"secret-page\n"
    assert fetch(f"http://{host}:{port}/index.txt") == b"secret-page\n"
    # a server-speaks-first client still gets plain bytes after the peek times out
    raw = socket.create_connection((host, port), timeout=10)
    with raw:
        raw.settimeout(1.0)
        with pytest.raises(socket.timeout):
            raw.recv(1)  # http.server waits for us: nothing arrives, and the tunnel stays open
        raw.sendall(b"GET /index.txt HTTP/1.0\r\n\r\n")
        raw.settimeout(10)
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    assert data.endswith(b"secret-page\n")
