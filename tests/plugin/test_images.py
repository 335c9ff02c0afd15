"""The local backend runs the declared image: pulled from a real registry on 127.0.0.1."""

from __future__ import annotations

import pytest

from registry import busybox_layer, directory, file

INNER = """
import urllib.request
import pytest
from pytest_modal_sandbox import Daemon, Probe

@pytest.mark.sandbox(
    image="{ref}",
    daemons=[Daemon("httpd", "httpd -f -p 8080 -h /www", ready=Probe.http(8080))],
    encrypted_ports=[8080],
)
def test_in_the_image(sandbox):
    assert urllib.request.urlopen(sandbox.url(8080)).read() == b"from the image\\n"
    assert sandbox.exec("sh", "-c", "echo $GREETING; pwd").stdout == "hello\\n/www\\n"
    # busybox's files, not the host's
    assert sandbox.exec("readlink", "/bin/sh").stdout == "busybox\\n"
"""

ON_HOST = """
import pytest

@pytest.mark.sandbox(image="{ref}")
def test_on_the_host(sandbox):
    assert sandbox.exec("readlink", "/bin/sh").stdout != "busybox\\n"
    assert sandbox.exec("test", "-d", "/usr/lib").returncode == 0
"""


@pytest.fixture
def image(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_CACHE_DIR", str(tmp_path / "cache"))
    layers = [
        busybox_layer(),
        [directory("www"), file("www/index.html", "from the image\n")],
    ]
    pushed = registry.push_image(
        "team/web", "v1", layers, env={"PATH": "/bin", "GREETING": "hello"}, workdir="/www"
    )
    return pushed.reference


def test_the_declared_image_runs(sbtester, image, backend):
    """On the emulator too: the plugin hands its image settings to the run's emulator."""
    sbtester.makepyfile(INNER.format(ref=image))
    result = sbtester.runpytest(
        f"--modal-sandbox={backend}", "--modal-sandbox-local-images=pull", "-n", "2"
    )
    result.assert_outcomes(passed=1)


def test_header_says_images_are_pulled(sbtester, image):
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-local-images=pull")
    result.stdout.fnmatch_lines(
        ["modal-sandbox: local (bubblewrap); images are pulled and cached*"]
    )


def test_unreachable_registry_is_a_clear_error(sbtester):
    sbtester.makepyfile(ON_HOST.format(ref="127.0.0.1:9/nothing/here:1"))
    result = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-local-images=pull")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*127.0.0.1:9*--modal-sandbox-local-images=host*"])
    assert "Traceback" not in result.stdout.str()


def test_auto_falls_back_to_the_host_with_a_warning(sbtester):
    sbtester.makepyfile(ON_HOST.format(ref="127.0.0.1:9/nothing/here:1"))
    result = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-local-images=auto")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*LocalImageFallback: 127.0.0.1:9/nothing/here:1 runs on the host*"]
    )


def test_host_image_patterns_map_just_those(sbtester, image):
    sbtester.makepyfile(ON_HOST.format(ref=image))
    result = sbtester.runpytest(
        "--modal-sandbox=local",
        "--modal-sandbox-local-images=pull",
        "--modal-sandbox-host-image=127.0.0.1:*/team/*",
    )
    result.assert_outcomes(passed=1)


def test_bad_mode_is_a_usage_error(sbtester):
    sbtester.makepyfile("def test_x(): pass")
    result = sbtester.runpytest("--modal-sandbox=local", "--modal-sandbox-local-images=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--modal-sandbox-local-images: 'docker' is not a local image*"])


def test_host_mode_reaches_the_emulator_too(sbtester, image, backend):
    sbtester.makepyfile(ON_HOST.format(ref=image))
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "--modal-sandbox-local-images=host")
    result.assert_outcomes(passed=1)
