"""Checks of the features built after the live suite was written (snapshots, connect tokens),
as their contract says they behave on Modal.  They were strict xfails while the features were
missing; now they must pass."""

from __future__ import annotations

import pytest

import faultlib
from pytest_modal_sandbox import Sandbox

pytestmark = pytest.mark.live

SNAPSHOT_TESTS = r"""
import modal

from pytest_modal_sandbox import start


def test_a_snapshot_is_an_image_with_the_prepared_files(sandbox, pytestconfig):
    sandbox.write_file("/srv/prepared.txt", "prepared")
    snapshot = sandbox.snapshot()
    # the clone carries the template's tags, so this run's sweeps would find it too
    tags = modal.Sandbox.from_id(sandbox.id).get_tags()
    with start(
        image=snapshot,
        backend="modal",
        app=pytestconfig.getini("modal_sandbox_app"),
        tags=tags,
    ) as clone:
        assert clone.id != sandbox.id
        assert clone.read_file("/srv/prepared.txt") == b"prepared"
"""

CONNECT_TESTS = r"""
import ssl
import urllib.error
import urllib.request

import pytest

from pytest_modal_sandbox import Daemon, Probe


@pytest.mark.sandbox(
    daemons=[
        Daemon(
            "web",
            "mkdir -p /tmp/www && printf connected > /tmp/www/index.html && "
            "exec python3 -m http.server 8080 --directory /tmp/www",
            ready=Probe.tcp(8080),
        )
    ],
)
def test_a_connect_token_reaches_the_sandbox_and_nothing_else_does(sandbox):
    creds = sandbox.connect_token()  # port 8080, as Modal's create_connect_token
    context = ssl.create_default_context()
    request = urllib.request.Request(creds.url, headers={"Authorization": f"Bearer {creds.token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        assert response.read() == b"connected"
    with pytest.raises(urllib.error.HTTPError):  # no token, no entry
        urllib.request.urlopen(creds.url, context=context, timeout=30)
"""


def test_a_snapshot_starts_a_clone_of_the_prepared_sandbox(live):
    faultlib.run_file(live, "snapshot", SNAPSHOT_TESTS, timeout=600)


def test_a_connect_token_reaches_the_sandbox(live):
    assert hasattr(Sandbox, "connect_token"), "the handle has no connect_token()"
    faultlib.run_file(live, "connect", CONNECT_TESTS)
