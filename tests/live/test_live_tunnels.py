"""Tunnels with a real certificate: ``sandbox.url(port)`` of an encrypted port is an ``https``
URL that a client's default SSL context trusts — a publicly trusted certificate for the
tunnel's own host name — and the port behind it answers."""

from __future__ import annotations

import pytest

import faultlib

pytestmark = pytest.mark.live

TLS_TESTS = r"""
import ssl
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from pytest_modal_sandbox import Daemon, Probe


@pytest.mark.sandbox(
    daemons=[
        Daemon(
            "web",
            "mkdir -p /tmp/www && printf trusted > /tmp/www/index.html && "
            "exec python3 -m http.server 8000 --directory /tmp/www",
            ready=Probe.http(8000),
        )
    ],
    encrypted_ports=[8000],
)
def test_https_with_a_publicly_trusted_certificate(sandbox):
    url = sandbox.url(8000)
    assert urlsplit(url).scheme == "https", url
    # the system's trust store and host name checking, nothing added
    with urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=30) as r:
        assert r.read() == b"trusted"
    # and the check is real: a client that trusts no one refuses the same URL
    nobody = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, context=nobody, timeout=30)
"""


def test_tunnel_has_a_publicly_trusted_certificate(live):
    faultlib.run_file(live, "tls", TLS_TESTS)
