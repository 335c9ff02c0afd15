"""An HTTP server as a daemon, reached through an encrypted port's URL."""

import urllib.request

import pytest

from pytest_modal_sandbox import Daemon, Probe


@pytest.mark.sandbox(
    image="python:3.12-slim",
    daemons=[
        Daemon(
            "web",
            "mkdir -p /srv/www && echo hello > /srv/www/index.html && "
            "exec python3 -m http.server 8000 --directory /srv/www",
            ready=Probe.http(8000, "/"),
        )
    ],
    encrypted_ports=[8000],
    workdir="/srv",
)
def test_web_server_answers(sandbox):
    body = urllib.request.urlopen(sandbox.url(8000)).read()
    assert body == b"hello\n"
    assert "GET / HTTP" in sandbox.logs("web")  # the daemon's log, readable at any time
