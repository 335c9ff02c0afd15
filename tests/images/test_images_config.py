"""An image's runtime config (``image_config``) from the real registry, and the daemon command
``docker run`` would start from it (``image_command``), run in the image on the local runtime."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_modal_sandbox.errors import SpecError
from pytest_modal_sandbox.images import (
    ImageConfig,
    ImageDigestMismatch,
    ImageNotFound,
    ImageStore,
    PlatformNotFound,
    RegistryUnreachable,
    image_command,
    image_config,
)
from pytest_modal_sandbox.images.command import DEFAULT_PATH
from pytest_modal_sandbox.images.manifest import parse_config
from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
from registry import LocalRegistry, busybox_layer, file

BIG = [[file("data", os.urandom(300_000))]]


def _requests(registry: LocalRegistry, since: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in registry.requests()[since:]]


def test_config_comes_without_the_layers(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image(
        "config/redis",
        "7",
        BIG,
        env={"REDIS_VERSION": "7.2", "PATH": "/usr/local/bin:/bin"},
        workdir="/data",
        user="redis",
        entrypoint=["docker-entrypoint.sh"],
        cmd=["redis-server"],
        config_extra={"ExposedPorts": {"6379/tcp": {}, "53/udp": {}, "8080": {}}},
    )
    before = len(registry.requests())
    config = image_config(image.reference, cache_dir=tmp_path)
    assert config == ImageConfig(
        entrypoint=("docker-entrypoint.sh",),
        cmd=("redis-server",),
        env={"REDIS_VERSION": "7.2", "PATH": "/usr/local/bin:/bin"},
        workdir="/data",
        user="redis",
        exposed_ports=("53/udp", "6379/tcp", "8080"),
        diff_ids=config.diff_ids,
        platform="linux/amd64",
        reference=image.reference,
        config_digest=image.config_digest,
    )
    assert config.tcp_ports == (6379, 8080)
    assert _requests(registry, before) == [
        "GET /v2/config/redis/manifests/7",
        f"GET /v2/config/redis/blobs/{image.config_digest}",
    ]  # no layer
    with pytest.raises(TypeError):
        config.env["X"] = "y"  # type: ignore[index]  # shared by callers: read-only
    # the same process asks again: the same object, no request, no file read needed
    assert image_config(image.reference, cache_dir=tmp_path) is config
    assert len(_requests(registry, before)) == 2


CHILD = textwrap.dedent("""
    import dataclasses, json, sys
    from pytest_modal_sandbox.images import image_config
    config = image_config(sys.argv[1], cache_dir=sys.argv[2])
    print(json.dumps({"cmd": config.cmd, "env": dict(config.env), "digest": config.config_digest}))
""")


def _in_child(reference: str, cache: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, reference, str(cache)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_other_processes_read_it_from_the_cache(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("config/cached", "v1", BIG, cmd=["serve"], env={"A": "1"})
    cache = tmp_path / "cache"
    first = _in_child(image.reference, cache)
    before = len(registry.requests())
    again = _in_child(image.reference, cache)  # another process: from disk, no network
    assert again == first == {"cmd": ["serve"], "env": {"A": "1"}, "digest": image.config_digest}
    assert _requests(registry, before) == []
    # a pinned digest already resolved under its tag is served from the cache too
    assert _in_child(image.by_digest, cache)["digest"] == image.config_digest
    assert _requests(registry, before) == []
    # only the config was fetched: pulling the image later downloads the layer, once
    root = ImageStore(cache).get(image.reference)
    assert (root.path / "data").stat().st_size == 300_000
    assert registry.blob_gets("config/cached") == dict.fromkeys(
        [image.config_digest, *image.layer_digests], 1
    )


def test_an_image_already_pulled_costs_no_request(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("config/pulled", "v1", BIG, entrypoint=["/bin/run"])
    ImageStore(tmp_path).get(image.reference)
    before = len(registry.requests())
    assert _in_child(image.reference, tmp_path)["digest"] == image.config_digest
    assert _requests(registry, before) == []


def test_a_damaged_cached_config_is_fetched_again(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("config/damaged", "v1", BIG, cmd=["a"])
    store = ImageStore(tmp_path)
    store.config(image.reference)
    blob = store.root / "blobs" / "sha256" / image.config_digest.split(":")[1]
    blob.write_bytes(blob.read_bytes().replace(b'"a"', b'"b"'))
    before = len(registry.requests())
    assert ImageStore(tmp_path).config(image.reference).cmd == ("a",)
    assert f"GET /v2/config/damaged/blobs/{image.config_digest}" in _requests(registry, before)


def test_pull_always_sees_a_moved_tag(registry: LocalRegistry, tmp_path: Path) -> None:
    first = registry.push_image("config/moving", "latest", BIG, cmd=["v1"])
    assert image_config(first.reference, cache_dir=tmp_path).cmd == ("v1",)
    registry.push_image("config/moving", "latest", BIG, cmd=["v2"])
    assert image_config(first.reference, cache_dir=tmp_path).cmd == ("v1",)  # resolved once
    assert image_config(first.reference, cache_dir=tmp_path, pull="always").cmd == ("v2",)
    assert image_config(first.reference, cache_dir=tmp_path).cmd == ("v2",)


def test_the_platform_is_chosen_from_an_index(registry: LocalRegistry, tmp_path: Path) -> None:
    amd = registry.push_image("config/multi", "amd64", BIG, cmd=["amd64"])
    arm = registry.push_image(
        "config/multi", "arm64", BIG, cmd=["arm64"], architecture="arm64", variant="v8"
    )
    index = registry.push_index("config/multi", "v1", {"linux/amd64": amd, "linux/arm64/v8": arm})
    host = image_config(index.reference, cache_dir=tmp_path)
    assert (host.cmd, host.platform) == (("amd64",), "linux/amd64")
    other = image_config(index.reference, cache_dir=tmp_path, platform="linux/arm64")
    assert (other.cmd, other.platform) == (("arm64",), "linux/arm64/v8")
    with pytest.raises(PlatformNotFound, match="no image for platform linux/s390x"):
        image_config(index.reference, cache_dir=tmp_path, platform="linux/s390x")


def test_errors_name_the_image_and_the_fix(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("config/errors", "v1", BIG)
    with pytest.raises(ImageNotFound, match="has no tag 'v2' \\(available tags: v1\\)"):
        image_config(f"{registry.host}/config/errors:v2", cache_dir=tmp_path)
    with pytest.raises(ImageNotFound, match="config/absent does not exist"):
        image_config(f"{registry.host}/config/absent:v1", cache_dir=tmp_path)
    registry.corrupt_blob(image.config_digest)
    with pytest.raises(ImageDigestMismatch, match=image.config_digest):
        image_config(image.reference, cache_dir=tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RegistryUnreachable, match="--modal-sandbox-local-images=host"):
        image_config(f"{closed}/config/errors:v1", cache_dir=tmp_path)
    assert list((tmp_path / "images" / "refs").iterdir()) == []  # nothing half-resolved


# -- image_command: docker run's rules ---------------------------------------------------------


def _config(**fields: object) -> ImageConfig:
    raw = {"rootfs": {"diff_ids": []}, "config": fields}
    return parse_config(json.dumps(raw).encode(), "test config")


def test_entrypoint_and_cmd() -> None:
    both = _config(Entrypoint=["/entry.sh", "-x"], Cmd=["serve", "--port", "1"])
    assert image_command(both).argv == ("/entry.sh", "-x", "serve", "--port", "1")
    assert image_command(both, args=["debug"]).argv == ("/entry.sh", "-x", "debug")
    assert image_command(both, args=[]).argv == ("/entry.sh", "-x")  # args replace CMD
    cmd_only = _config(Cmd=["redis-server"])
    assert image_command(cmd_only).argv == ("redis-server",)
    assert image_command(cmd_only, args=["sh", "-c", "echo hi"]).argv == ("sh", "-c", "echo hi")
    shell_form = _config(Cmd=["/bin/sh", "-c", "exec httpd -f -p 80"])  # CMD httpd... in a file
    assert image_command(shell_form).argv == ("/bin/sh", "-c", "exec httpd -f -p 80")
    entry_only = _config(Entrypoint=["/bin/app"])
    assert image_command(entry_only, args=("--verbose",)).argv == ("/bin/app", "--verbose")
    assert _config(Entrypoint="/bin/app").entrypoint == ("/bin/app",)  # strslice: one word


def test_env_workdir_and_user() -> None:
    config = _config(Cmd=["x"], Env=["A=1", "B=image", "EMPTY="], WorkingDir="/srv", User="1000")
    command = image_command(config, env={"B": "mine", "C": "3"})
    assert command.env == {"A": "1", "B": "mine", "EMPTY": "", "PATH": DEFAULT_PATH, "C": "3"}
    assert (command.workdir, command.user) == ("/srv", "1000")
    bare = image_command(_config(Cmd=["x"], Env=["PATH=/opt/bin"]), env={})
    assert bare.env == {"PATH": "/opt/bin"} and (bare.workdir, bare.user) == ("/", None)
    assert image_command(_config(Cmd=["x"]), env={"PATH": "/p"}).env == {"PATH": "/p"}


def test_nothing_to_run_and_bad_arguments_are_spec_errors() -> None:
    empty = dataclasses.replace(_config(Env=["A=1"]), reference="example.com/base:1")
    with pytest.raises(SpecError) as info:
        image_command(empty)
    assert str(info.value) == (
        "image example.com/base:1 has neither ENTRYPOINT nor CMD, so there is nothing to run: "
        "set a command: Daemon(name, command=...)"
    )
    with pytest.raises(SpecError, match="has no ENTRYPOINT and args is empty"):
        image_command(_config(Cmd=["x"]), args=[])
    with pytest.raises(SpecError, match=r"args must be a list of strings.*shlex.split"):
        image_command(_config(Cmd=["x"]), args="--port 1")
    with pytest.raises(SpecError, match="args must be a list of strings"):
        image_command(_config(Cmd=["x"]), args=["--port", 1])  # type: ignore[list-item]
    with pytest.raises(SpecError, match="env must map variable names to strings"):
        image_command(_config(Cmd=["x"]), env={"PORT": 1})  # type: ignore[dict-item]


# -- the command runs in the image ---------------------------------------------------------------


def test_the_command_runs_in_the_image(
    registry: LocalRegistry, runtime: LocalRuntime, tmp_path: Path
) -> None:
    image = registry.push_image(
        "config/e2e",
        "v1",
        [busybox_layer(), [file("srv/motd", "from the image")]],
        env={"GREETING": "hello"},
        workdir="/srv",
        entrypoint=["/bin/sh", "-c", 'echo "$GREETING $NAME $(pwd) $(cat motd) $PATH" "$@"', "sh"],
        cmd=["default-arg"],
    )
    config = image_config(image.reference, cache_dir=tmp_path)
    root = ImageStore(tmp_path).get(image.reference)  # the config came first; now the layers
    sb = runtime.create(SandboxConfig(rootfs=str(root.path)))
    try:
        for args, tail in ((None, "default-arg"), (["a", "b"], "a b")):
            command = image_command(config, args=args, env={"NAME": "test"})
            result = sb.exec(list(command.argv), env=command.env, workdir=command.workdir)
            assert result.returncode == 0, result
            assert (
                result.stdout.decode() == f"hello test /srv from the image {DEFAULT_PATH} {tail}\n"
            )
    finally:
        sb.terminate(wait=True)
