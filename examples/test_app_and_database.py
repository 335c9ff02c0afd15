"""Your app and its database: the app's code mounted from the repository (``mounts=``), the
database started by its image's own entrypoint (``Daemon.from_image``), the app reaching it.

The database image's ``docker-entrypoint.sh`` reads ``DB_PASSWORD`` and starts the server,
as ``postgres``'s reads ``POSTGRES_PASSWORD``: the test sets the variable and never retypes
the image's start-up command.  Offline, ``conftest.py`` pushes that image to a registry on
127.0.0.1; with your own registry it is just ``image="your/database:tag"``.
"""

import os
import urllib.request

import pytest

from pytest_modal_sandbox import Daemon, Probe

DB_IMAGE = os.environ.get("EXAMPLE_DB_IMAGE", "")


@pytest.mark.skipif(not DB_IMAGE, reason="needs redis-server on this machine (apt redis-server)")
@pytest.mark.sandbox(
    image=DB_IMAGE or "unused",
    env={"DB_PASSWORD": "example-password"},
    mounts={"/srv/app": "examples/app"},  # relative to pytest's rootdir: the repository
    daemons=[
        Daemon.from_image("db", ready=Probe.tcp(6379)),
        Daemon("app", "httpd -f -p 8000 -h /srv/app", ready=Probe.tcp(8000)),
    ],
    encrypted_ports=[8000],
)
def test_the_app_counts_visits_in_its_database(sandbox):
    visit = sandbox.url(8000) + "/cgi-bin/visits"
    assert urllib.request.urlopen(visit).read() == b"visits: 1\n"
    assert urllib.request.urlopen(visit).read() == b"visits: 2\n"
    # the count is in the database, which lets nobody in without the password
    assert sandbox.exec("redis-cli", "ping").stdout.startswith("NOAUTH")
    db = sandbox.exec("redis-cli", "-a", "example-password", "--no-auth-warning", "get", "visits")
    assert db.stdout == "2\n"
