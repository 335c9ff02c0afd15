"""Two daemons in one sandbox: a backend, and a front that talks to it over localhost."""

import urllib.request

import pytest

from pytest_modal_sandbox import Daemon, Probe

BACKEND = "python3 -m http.server 8001 --bind 127.0.0.1 --directory /etc"

# The front answers every request with what the backend returns for /hostname.
FRONT = """
import http.server, urllib.request
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = urllib.request.urlopen("http://127.0.0.1:8001/hostname").read()
        self.send_response(200); self.end_headers(); self.wfile.write(b"front sees " + body)
http.server.HTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


@pytest.mark.sandbox(
    image="python:3.12-slim",
    daemons=[
        Daemon("backend", BACKEND, ready=Probe.tcp(8001)),
        Daemon("front", ["python3", "-c", FRONT], ready=Probe.http(8080)),
    ],
    encrypted_ports=[8080],  # only the front is exposed
)
def test_front_reaches_backend(sandbox):
    hostname = sandbox.exec("cat", "/etc/hostname").stdout
    body = urllib.request.urlopen(sandbox.url(8080)).read().decode()
    assert body == f"front sees {hostname}"
