"""``Daemon.from_image``: the image's own ENTRYPOINT + CMD, env and workdir, on every backend,
from an image pushed to the real registry on 127.0.0.1."""

from __future__ import annotations

import pytest

from registry import busybox_layer, directory, file

ENTRY = """#!/bin/sh
echo "entry: GREETING=$GREETING WHO=$WHO pwd=$(pwd) args=$*"
mkdir -p /www && echo "$GREETING $WHO" > "/www/$WHO.html"
exec httpd -f -h /www "$@"
"""

INNER = """
import urllib.request
import pytest
from pytest_modal_sandbox import Daemon, Probe

@pytest.mark.sandbox(
    image="{ref}",
    env={{"GREETING": "from-spec"}},
    daemons=[
        Daemon.from_image("web", env={{"WHO": "daemon"}}, ready=Probe.tcp(8080)),
        Daemon.from_image("other", args=["-p", "8081"], ready=Probe.tcp(8081)),
    ],
    encrypted_ports=[8080, 8081],
)
def test_entrypoint(sandbox):
    # the spec's env wins over the image's, the daemon's env is on top, CMD is the default
    page = urllib.request.urlopen(sandbox.url(8080) + "/daemon.html").read()
    assert page == b"from-spec daemon\\n"
    assert "pwd=/srv args=-p 8080" in sandbox.logs("web")
    # args replace CMD, never ENTRYPOINT
    assert "WHO=image pwd=/srv args=-p 8081" in sandbox.logs("other")
"""

ERROR = """
import pytest
from pytest_modal_sandbox import Daemon

@pytest.mark.sandbox(image="{ref}", daemons=[Daemon.from_image("web")])
def test_x(sandbox):
    pass
"""


@pytest.fixture
def images(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_CACHE_DIR", str(tmp_path / "cache"))
    web = registry.push_image(
        "team/entry",
        "v1",
        [busybox_layer(), [directory("srv"), file("entry.sh", ENTRY, mode=0o755)]],
        env={"PATH": "/bin", "GREETING": "hello", "WHO": "image"},
        workdir="/srv",
        entrypoint=["/entry.sh"],
        cmd=["-p", "8080"],
    )
    bare = registry.push_image("team/bare", "v1", env={"PATH": "/bin"})
    return web.reference, bare.reference


def test_the_image_entrypoint_runs_as_a_daemon(sbtester, images, backend):
    sbtester.makepyfile(INNER.format(ref=images[0]))
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-local-images=pull")
    result.assert_outcomes(passed=1)


def test_no_entrypoint_and_host_images_are_clear_errors(sbtester, images, backend):
    sbtester.makepyfile(
        test_bare=ERROR.format(ref=images[1]), test_host=ERROR.format(ref=images[0])
    )
    result = sbtester.runpytest(
        f"--modal-sandbox={backend}",
        "--modal-sandbox-local-images=pull",
        f"--modal-sandbox-host-image={images[0]}",
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_bare.py::test_x*daemons[[]0] (web): Daemon.from_image: image * has neither "
            "ENTRYPOINT nor CMD, so there is nothing to run: set a command: Daemon(name, *",
            "*test_host.py::test_x*Daemon.from_image ('web'): image * is mapped to the host "
            "filesystem*--modal-sandbox-local-images=pull*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
