"""End to end: a sandbox on the local runtime running in an image pulled from the registry."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request

import pytest

from pytest_modal_sandbox.images import ImageRoot, ImageStore
from pytest_modal_sandbox.runtime import (
    InvalidConfig,
    LocalRuntime,
    LocalSandbox,
    SandboxConfig,
)
from registry import LocalRegistry, busybox_layer, directory, file


@pytest.fixture
def web_image(registry: LocalRegistry, store: ImageStore) -> ImageRoot:
    image = registry.push_image(
        "e2e/web",
        "v1",
        [
            busybox_layer(),
            [directory("srv"), file("srv/index.html", "<h1>served from the image</h1>\n")],
        ],
        env={"GREETING": "hello from the image", "PATH": "/usr/bin:/bin"},
        workdir="/srv",
        cmd=["httpd", "-f"],
    )
    return store.get(image.reference)


def _create(runtime: LocalRuntime, root: ImageRoot, **kwargs: object) -> LocalSandbox:
    config = SandboxConfig(
        rootfs=str(root.path), env=dict(root.env), workdir=root.workdir, **kwargs
    )  # type: ignore[arg-type]
    try:
        return runtime.create(config)
    except InvalidConfig as exc:
        if "not supported yet" in str(exc):
            pytest.skip(f"the runtime does not run image roots yet: {exc}")
        raise


def _get(url: str) -> bytes:
    last: Exception | None = None
    for _ in range(200):  # bounded: the daemon needs a moment to bind
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                url, timeout=5
            ) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, ConnectionError) as exc:
            last = exc
            time.sleep(0.025)
    raise AssertionError(f"{url} never answered: {last}")


def test_env_workdir_and_isolation(
    runtime: LocalRuntime, web_image: ImageRoot, store: ImageStore
) -> None:
    with web_image.use():  # what the local backend does while a sandbox runs in the root
        sb = _create(runtime, web_image)
        assert store.prune() == []  # in use: kept
        _check_env_workdir_and_isolation(sb, web_image)
    assert [c.config_digest for c in store.prune(dry_run=True)] == [web_image.config_digest]


def _check_env_workdir_and_isolation(sb: LocalSandbox, web_image: ImageRoot) -> None:
    try:
        out = sb.exec(["sh", "-c", 'echo "$GREETING"; pwd; cat index.html; id -u'])
        assert out.returncode == 0, out
        assert out.stdout.decode().splitlines() == [
            "hello from the image",
            "/srv",
            "<h1>served from the image</h1>",
            "0",
        ]
        # the image is the whole root: the host's files are not there
        host_only = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "/etc/os-release"
        assert sb.exec(["test", "-e", host_only]).returncode == 1
        # writes land in the sandbox's private view, never in the shared image root
        changed = sb.exec(["sh", "-c", "echo new > /srv/new.txt && rm /bin/ls && ls_gone=1"])
        assert changed.returncode == 0, changed
        assert sb.exec(["cat", "/srv/new.txt"]).stdout == b"new\n"
        hosts = sb.exec(["cat", "/etc/hosts"]).stdout.decode()
        assert "localhost" in hosts
    finally:
        sb.terminate(wait=True)
    assert not (web_image.path / "srv/new.txt").exists()
    assert (web_image.path / "bin/ls").is_symlink()


def test_daemon_from_the_image_through_a_tunnel(
    runtime: LocalRuntime, web_image: ImageRoot
) -> None:
    sb = _create(runtime, web_image, ports=[8000])
    try:
        started = sb.exec(["httpd", "-p", "8000", "-h", "/srv"])  # busybox httpd daemonizes
        assert started.returncode == 0, started
        host, port = sb.tunnel(8000)
        assert _get(f"http://{host}:{port}/index.html") == b"<h1>served from the image</h1>\n"
    finally:
        sb.terminate(wait=True)
    assert sb.poll() is not None


def test_two_sandboxes_share_one_root(runtime: LocalRuntime, web_image: ImageRoot) -> None:
    a = _create(runtime, web_image)
    b = _create(runtime, web_image)
    try:
        assert a.exec(["sh", "-c", "echo a > /srv/mine"]).returncode == 0
        assert b.exec(["test", "-e", "/srv/mine"]).returncode == 1
    finally:
        a.terminate(wait=True)
        b.terminate(wait=True)
