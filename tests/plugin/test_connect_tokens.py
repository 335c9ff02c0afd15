"""``sandbox.connect_token()``: a URL and a bearer token that reach the sandbox's server on
port 8080 (declared or not), and a 401 without the token, on every backend."""

from __future__ import annotations

TOKENS = """
import urllib.error
import urllib.request

import pytest
from pytest_modal_sandbox import Daemon, Probe

SERVER = '''
import http.server

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen = self.headers.get("Authorization") is not None
        body = ("connected; auth header seen: %s" % seen).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
'''

@pytest.mark.sandbox(
    daemons=[Daemon("web", ["python3", "-c", SERVER], ready=Probe.tcp(8080))],
)
def test_token(sandbox):
    creds = sandbox.connect_token()
    assert "token=<hidden>" in repr(creds)
    request = urllib.request.Request(creds.url + "/x", headers=creds.headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        # the server never sees the token
        assert response.read() == b"connected; auth header seen: False"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": creds.token}):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(urllib.request.Request(creds.url, headers=headers), timeout=30)
        assert denied.value.code == 401
    other = sandbox.connect_token()
    assert other.token != creds.token
"""


def test_a_connect_token_reaches_port_8080_and_nothing_else_does(sbtester, backend):
    sbtester.makepyfile(TOKENS)
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=1)
