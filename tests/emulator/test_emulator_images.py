"""Real images in the emulator: ``modal.Image.from_registry`` runs the pushed image, ``RUN``
steps are built (streamed, cached by the chain, built once under concurrency), and the
filesystem API and TCP probes work in images without Python, a shell or ``cat``.

Images are built from busybox-static and pushed to a real registry on 127.0.0.1
(``tests/registry.py``); each emulator here gets a private image and build cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from emulator_helpers import no_process_mentions, open_client, processes_mentioning

from registry import BUSYBOX, LocalRegistry, PushedImage, busybox_layer, directory, file

modal = pytest.importorskip("modal")
from grpclib.client import Channel  # noqa: E402
from modal.exception import ImageBuildError  # noqa: E402
from modal_proto import api_grpc, api_pb2  # noqa: E402

from pytest_modal_sandbox.emulator import EmulatorProcess  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None, reason="needs busybox (apt busybox-static)"
)
_R = api_pb2.GenericResult


class Emu:
    """An emulator process with its own state and caches, a client and an app."""

    def __init__(self, tmp: Path, cache: Path, images: str, host_images: tuple[str, ...]) -> None:
        self.state = tmp
        docker = tmp / "docker-config"  # never the developer's registry credentials
        docker.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTEST_MODAL_SANDBOX_CACHE_DIR=str(cache), DOCKER_CONFIG=str(docker))
        self.proc = EmulatorProcess(
            state_dir=tmp / "state", images=images, host_images=host_images, env=env
        ).start()
        self.client = open_client(self.proc.url)
        self.app = modal.App.lookup("images", create_if_missing=True, client=self.client)
        self.made: list[Any] = []

    def sandbox(self, *args: str, **kwargs: Any) -> Any:
        sb = modal.Sandbox.create(*args, app=self.app, client=self.client, **kwargs)
        self.made.append(sb)
        return sb

    def images(self) -> dict[str, int]:
        return dict(self.proc.stats()["images"])

    def close(self) -> None:
        for sb in self.made:
            sb.terminate()
        self.client.__exit__(None, None, None)
        assert self.proc.stop() == 0
        assert no_process_mentions(str(self.state))


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[Callable[..., Emu]]:
    """``make_emulator(images="pull", cache=None)``: emulators sharing ``cache`` if given."""
    started: list[Emu] = []

    def make(
        images: str = "pull", cache: Path | None = None, host_images: tuple[str, ...] = ()
    ) -> Emu:
        emu = Emu(tmp_path / f"emu{len(started)}", cache or tmp_path / "cache", images, host_images)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.close()


@pytest.fixture(scope="module")
def app_image(registry: LocalRegistry) -> PushedImage:
    """busybox, plus an env, a workdir with content and a web root."""
    extra = [
        directory("app"),
        file("app/data.txt", "from the image\n"),
        directory("www"),
        file("www/index.html", "served from the image\n"),
        file("etc/group", "root:x:0:\nstaff:x:50:\n"),
    ]
    return registry.push_image(
        "emu/app",
        "v1",
        layers=[busybox_layer(), extra],
        env={"PATH": "/bin", "GREETING": "from-image", "LEVEL": "image"},
        workdir="/app",
    )


@pytest.fixture(scope="module")
def bare_image(registry: LocalRegistry) -> PushedImage:
    """No shell, no cat, no Python: busybox only as /bin/sleep and /bin/httpd."""
    data = Path(BUSYBOX).read_bytes()
    layer = [
        directory("bin"),
        file("bin/sleep", data, mode=0o755),
        file("bin/httpd", data, mode=0o755),
        directory("etc"),
        file("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n"),
        directory("www"),
        file("www/index.html", "bare\n"),
        directory("tmp", mode=0o1777),
    ]
    return registry.push_image("emu/bare", "v1", layers=[layer], env={"PATH": "/bin"})


def text(process: Any) -> str:
    process.wait()
    return str(process.stdout.read())


# -- from_registry ------------------------------------------------------------------------------


def test_from_registry_runs_the_image_with_its_env_and_workdir(
    make_emulator: Callable[..., Emu], app_image: PushedImage
) -> None:
    emu = make_emulator()
    image = modal.Image.from_registry(app_image.reference)
    sb = emu.sandbox(image=image, env={"LEVEL": "sandbox"})
    assert text(sb.exec("cat", "data.txt")) == "from the image\n"  # in the image's workdir
    assert text(sb.exec("pwd")) == "/app\n"
    assert text(sb.exec("sh", "-c", "echo $GREETING $LEVEL")) == "from-image sandbox\n"
    assert sb.exec("test", "-e", "/usr/bin/python3").wait() == 1  # not the host's root
    other = emu.sandbox(image=image, workdir="/www")
    assert text(other.exec("pwd")) == "/www\n"  # the sandbox's workdir wins
    assert emu.images()["builds"] == 0  # nothing to build: the image is the root


def test_run_commands_are_built_into_the_image_and_cached_by_the_chain(
    make_emulator: Callable[..., Emu], app_image: PushedImage, tmp_path: Path
) -> None:
    def chain() -> Any:
        return (
            modal.Image.from_registry(app_image.reference)
            .env({"STAGE": "built"})
            .run_commands("echo built-$STAGE > /built", "mkdir -p /opt/tool")
            .workdir("/opt/tool")
        )

    emu = make_emulator()
    sb = emu.sandbox(image=chain())
    assert text(sb.exec("cat", "/built")) == "built-built\n"
    assert text(sb.exec("pwd")) == "/opt/tool\n"
    assert text(sb.exec("cat", "/app/data.txt")) == "from the image\n"  # on top of the image
    assert emu.images()["builds"] == 1
    again = emu.sandbox(image=chain())  # the same chain again: no rebuild
    assert text(again.exec("cat", "/built")) == "built-built\n"
    assert emu.images()["builds"] == 1
    later = make_emulator(cache=tmp_path / "cache")  # a new emulator, the same cache
    sb = later.sandbox(image=chain())
    assert text(sb.exec("cat", "/built")) == "built-built\n"
    assert later.images() == {"layers": 4, "builds": 0, "cache_hits": 1}


def test_a_failing_step_fails_the_build_with_its_log(
    make_emulator: Callable[..., Emu], app_image: PushedImage
) -> None:
    emu = make_emulator()
    image = modal.Image.from_registry(app_image.reference).run_commands(
        "echo about-to-fail; echo on-stderr >&2; exit 3"
    )
    with pytest.raises(ImageBuildError) as info:
        emu.sandbox(image=image)
    message = str(info.value)
    assert "RUN echo about-to-fail" in message and "exit code 3" in message
    assert "about-to-fail" in message.split("exit code 3", 1)[1]  # the step's output
    assert "on-stderr" in message
    assert emu.proc.stats()["sandboxes"]["created"] == 0


def test_copy_from_the_build_context_and_build_secrets(
    make_emulator: Callable[..., Emu], app_image: PushedImage, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    (context / "pkg" / "sub").mkdir(parents=True)
    (context / "settings.ini").write_text("[app]\nmode=test\n")
    (context / "pkg" / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    (context / "pkg" / "tool.sh").chmod(0o755)
    (context / "pkg" / "sub" / "data.txt").write_text("nested\n")
    emu = make_emulator()
    image = (
        modal.Image.from_registry(app_image.reference)
        .dockerfile_commands(["COPY settings.ini /etc/app/"], context_dir=context)
        .add_local_dir(context / "pkg", "/opt/pkg", copy=True)
        .add_local_file(context / "settings.ini", "/root/copy.ini", copy=True)
        .run_commands("echo $TOKEN > /token", secrets=[modal.Secret.from_dict({"TOKEN": "t0k"})])
    )
    sb = emu.sandbox(image=image)
    assert text(sb.exec("cat", "/etc/app/settings.ini")) == "[app]\nmode=test\n"
    assert text(sb.exec("cat", "/root/copy.ini")) == "[app]\nmode=test\n"
    assert text(sb.exec("/opt/pkg/tool.sh")) == "tool-ran\n"  # the mode came along
    assert text(sb.exec("cat", "/opt/pkg/sub/data.txt")) == "nested\n"
    assert text(sb.exec("cat", "/token")) == "t0k\n"
    assert "TOKEN" not in text(sb.exec("env"))  # build secrets are not the sandbox's env


def test_large_context_files_travel_as_blobs(
    make_emulator: Callable[..., Emu], app_image: PushedImage, tmp_path: Path
) -> None:
    """Files of 4 MiB and more go through the blob store (BlobCreate + an HTTP PUT)."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    emu = make_emulator()
    image = modal.Image.from_registry(app_image.reference).add_local_file(
        big, "/big.bin", copy=True
    )
    sb = emu.sandbox(image=image)
    assert (
        text(sb.exec("md5sum", "/big.bin")).split()[0] == hashlib.md5(big.read_bytes()).hexdigest()
    )


def test_build_steps_are_root_inside_and_confined(
    make_emulator: Callable[..., Emu], app_image: PushedImage, tmp_path: Path
) -> None:
    """A ``RUN`` step is root in the image (it may chown others' files) and nothing more: it
    cannot mount, make devices, write host-wide sysctls or change the host's network, and
    a symlink it leaves cannot lead a later ``COPY`` out of the image."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "pms-walls.ini").write_text("copied\n")
    panic = Path("/proc/sys/kernel/panic").read_text()
    tries = [
        "mount -t tmpfs x /mnt",
        "mknod /disk b 8 0",
        f"printf {panic.strip()} > /proc/sys/kernel/panic",  # the host's value: harmless if it went
        "ip link add pmswalls1 type dummy",
        "ip addr add 10.234.9.9/32 dev lo",
    ]
    steps = [f"({t}) 2>/dev/null && echo ALLOWED: {t} >> /attempts || echo denied >> /attempts"
             for t in tries]  # fmt: skip
    emu = make_emulator()
    image = (
        modal.Image.from_registry(app_image.reference)
        .run_commands("chown 7:8 /app/data.txt", "ln -s /etc /hostetc", *steps)
        .dockerfile_commands(["COPY pms-walls.ini /hostetc/"], context_dir=context)
    )
    try:
        sb = emu.sandbox(image=image)
        assert text(sb.exec("cat", "/attempts")) == "denied\n" * len(tries)
        assert text(sb.exec("stat", "-c", "%u:%g", "/app/data.txt")) == "7:8\n"
        assert text(sb.exec("cat", "/etc/pms-walls.ini")) == "copied\n"  # the image's /etc
        assert not os.path.exists("/etc/pms-walls.ini")
        assert Path("/proc/sys/kernel/panic").read_text() == panic
        links = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert "pmswalls1" not in links and "10.234.9.9" not in links
    finally:
        Path("/etc/pms-walls.ini").unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", "pmswalls1"], capture_output=True)
        subprocess.run(["ip", "addr", "del", "10.234.9.9/32", "dev", "lo"], capture_output=True)


def test_files_mounted_at_start_are_private_copies(
    make_emulator: Callable[..., Emu], app_image: PushedImage, tmp_path: Path
) -> None:
    """``add_local_file``/``add_local_dir`` without ``copy=True``: attached at start, writable,
    and a write inside reaches neither the user's files nor the next sandbox."""
    local = tmp_path / "f.txt"
    local.write_text("x")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "run.sh").write_text("echo ran\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    (tree / "top.txt").write_text("top")
    emu = make_emulator()
    image = (
        modal.Image.from_registry(app_image.reference)
        .add_local_file(local, "/f.txt")
        .add_local_dir(tree, "/srv/app")
    )
    sb = emu.sandbox(image=image)
    assert text(sb.exec("cat", "/f.txt", "/srv/app/top.txt")) == "xtop"
    assert text(sb.exec("/srv/app/sub/run.sh")) == "ran\n"
    sb.exec("sh", "-c", "echo changed > /srv/app/top.txt; echo y > /f.txt").wait()
    assert text(sb.exec("cat", "/srv/app/top.txt")) == "changed\n"
    assert (tree / "top.txt").read_text() == "top" and local.read_text() == "x"
    again = emu.sandbox(image=image)
    assert text(again.exec("cat", "/f.txt", "/srv/app/top.txt")) == "xtop"


# -- the build log, and concurrent builds --------------------------------------------------------


class HoldingServer:
    """An HTTP server on 127.0.0.1 that answers each request only when released."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)  # a closed socket does not wake a blocked accept()
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with conn:
                self.requests.append(conn.recv(4096))
                self.arrived.set()
                self.release.wait(60)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ngo\n")

    def close(self) -> None:
        self.closed = True
        self.release.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def holding_server() -> Iterator[HoldingServer]:
    server = HoldingServer()
    yield server
    server.close()


async def _build(control: Any, app_id: str, commands: list[str], base: str = "") -> str:
    image = api_pb2.Image(dockerfile_commands=commands)
    if base:
        image.base_images.append(api_pb2.BaseImage(docker_tag="base", image_id=base))
    resp = await control.ImageGetOrCreate(
        api_pb2.ImageGetOrCreateRequest(app_id=app_id, image=image)
    )
    return str(resp.image_id)


async def _join(control: Any, image_id: str, until: Callable[[str], bool]) -> tuple[str, Any]:
    """Read the build stream (rejoining as the client does) until ``until(log)`` or the end."""
    log, last = "", ""
    while True:
        async with control.ImageJoinStreaming.open() as stream:
            await stream.send_message(
                api_pb2.ImageJoinStreamingRequest(
                    image_id=image_id, timeout=55, last_entry_id=last
                ),
                end=True,
            )
            async for resp in stream:
                last = resp.entry_id or last
                log += "".join(t.data for t in resp.task_logs)
                if resp.result.status:
                    return log, resp.result
                if until(log):
                    await stream.cancel()  # leave the long-poll now (the client would wait)
                    return log, None


def _control(url: str) -> tuple[Channel, Any]:
    parsed = urlparse(url)
    channel = Channel(parsed.hostname, parsed.port)
    return channel, api_grpc.ModalClientStub(channel)


def test_the_build_log_is_streamed_while_the_step_runs(
    make_emulator: Callable[..., Emu], app_image: PushedImage, holding_server: HoldingServer
) -> None:
    emu = make_emulator()
    step = f"RUN echo waiting; wget -q -O /got http://127.0.0.1:{holding_server.port}/; echo done"

    async def scenario() -> None:
        channel, control = _control(emu.proc.url)
        try:
            base = await _build(control, emu.app.app_id, [f"FROM {app_image.reference}"])
            _, result = await _join(control, base, lambda log: False)
            assert result.status == _R.GENERIC_STATUS_SUCCESS
            top = await _build(control, emu.app.app_id, ["FROM base", step], base)
            log, result = await _join(control, top, lambda log: "waiting\n" in log)
            # the step's first line arrived while the step is still blocked on our server
            assert result is None and holding_server.arrived.wait(30)
            holding_server.release.set()
            log, result = await _join(control, top, lambda log: False)
            assert result.status == _R.GENERIC_STATUS_SUCCESS
            assert "done\n" in log
        finally:
            channel.close()

    asyncio.run(scenario())


def test_concurrent_builds_of_one_chain_build_it_once(
    make_emulator: Callable[..., Emu],
    app_image: PushedImage,
    holding_server: HoldingServer,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-cache"
    first, second = make_emulator(cache=shared), make_emulator(cache=shared)
    step = f"RUN wget -q -O /got http://127.0.0.1:{holding_server.port}/"

    async def build_on(emu: Emu, started: asyncio.Event | None) -> tuple[str, Any]:
        channel, control = _control(emu.proc.url)
        try:
            base = await _build(control, emu.app.app_id, [f"FROM {app_image.reference}"])
            await _join(control, base, lambda log: False)
            top = await _build(control, emu.app.app_id, ["FROM base", step], base)
            if started is None:
                return await _join(control, top, lambda log: False)
            log, _ = await _join(control, top, lambda log: "waiting for another build" in log)
            started.set()  # the second build is waiting on the first one's lock
            more, result = await _join(control, top, lambda log: False)
            return log + more, result
        finally:
            channel.close()

    async def scenario() -> None:
        one = asyncio.ensure_future(build_on(first, None))
        await asyncio.to_thread(holding_server.arrived.wait, 60)  # the first one is building
        waiting = asyncio.Event()
        two = asyncio.ensure_future(build_on(second, waiting))
        await asyncio.wait_for(waiting.wait(), 60)
        holding_server.release.set()
        (_, r1), (log2, r2) = await asyncio.gather(one, two)
        assert r1.status == r2.status == _R.GENERIC_STATUS_SUCCESS
        assert "using the cached build" in log2

    asyncio.run(scenario())
    assert len(holding_server.requests) == 1  # the step ran once
    assert first.images()["builds"] + second.images()["builds"] == 1
    assert second.images()["cache_hits"] == 1


def test_stopping_the_emulator_mid_build_ends_the_build_and_leaves_nothing(
    make_emulator: Callable[..., Emu],
    app_image: PushedImage,
    holding_server: HoldingServer,
    tmp_path: Path,
) -> None:
    emu = make_emulator(cache=tmp_path / "stop-cache")
    step = f"RUN wget -q -O /got http://127.0.0.1:{holding_server.port}/"

    async def scenario() -> Any:
        channel, control = _control(emu.proc.url)
        try:
            base = await _build(control, emu.app.app_id, [f"FROM {app_image.reference}"])
            await _join(control, base, lambda log: False)
            top = await _build(control, emu.app.app_id, ["FROM base", step], base)
            joined = asyncio.ensure_future(_join(control, top, lambda log: False))
            await asyncio.to_thread(holding_server.arrived.wait, 60)  # the step is running
            assert await asyncio.to_thread(emu.proc.stop) == 0
            return await joined
        finally:
            channel.close()

    _, result = asyncio.run(scenario())
    assert result.status == _R.GENERIC_STATUS_TERMINATED  # the waiting client got an answer
    assert processes_mentioning(str(emu.state)) == []  # the build sandbox is gone
    assert list((tmp_path / "stop-cache" / "emulator-builds" / "roots").iterdir()) == []
    assert list((tmp_path / "stop-cache" / "emulator-builds" / "tmp").iterdir()) == []


# -- what a base that cannot be pulled runs on ----------------------------------------------------


def test_auto_falls_back_to_the_host_root_with_a_warning(
    make_emulator: Callable[..., Emu],
) -> None:
    emu = make_emulator(images="auto")
    missing = "127.0.0.1:9/nobody/home:v1"  # nothing listens on port 9 (discard)
    image = modal.Image.from_registry(missing).run_commands("echo x > /x")
    sb = emu.sandbox(image=image)
    assert sb.exec("test", "-e", "/x").wait() == 1  # RUN steps cannot change the host root
    assert sb.exec("test", "-d", "/usr/bin").wait() == 0  # the host's root
    assert "runs on the host root, read-only: it cannot be pulled" in emu.proc.log_tail()


def test_pull_mode_fails_the_build_naming_the_image_and_the_fallback(
    make_emulator: Callable[..., Emu],
) -> None:
    emu = make_emulator(images="pull")
    with pytest.raises(ImageBuildError, match=r"cannot pull 127\.0\.0\.1:9/nobody/home:v1.*auto"):
        emu.sandbox(image=modal.Image.from_registry("127.0.0.1:9/nobody/home:v1"))


def _docker_hub_unreachable() -> bool:
    import socket

    try:
        socket.getaddrinfo("registry-1.docker.io", 443)
    except OSError:
        return True
    return False


@pytest.mark.skipif(not _docker_hub_unreachable(), reason="needs Docker Hub to be unreachable")
def test_pull_mode_runs_modals_default_image_on_the_host_offline(
    make_emulator: Callable[..., Emu],
) -> None:
    """debian_slim() stands for Modal's default environment, not an image the test named."""
    emu = make_emulator(images="pull")
    sb = emu.sandbox(image=modal.Image.debian_slim())
    assert sb.exec("test", "-d", "/usr/bin").wait() == 0
    assert "runs on the host root, read-only: it cannot be pulled" in emu.proc.log_tail()


def test_host_mode_runs_every_base_on_the_host_and_skips_run_steps(
    make_emulator: Callable[..., Emu], app_image: PushedImage
) -> None:
    emu = make_emulator(images="host")
    image = modal.Image.from_registry(app_image.reference).env({"E": "1"}).run_commands("true")
    sb = emu.sandbox(image=image)
    assert sb.exec("test", "-d", "/usr/bin").wait() == 0
    assert text(sb.exec("sh", "-c", "echo $E")) == "1\n"  # ENV still applies


# -- the filesystem API and TCP probes in images without tools -------------------------------------


@pytest.mark.parametrize("which", ["busybox", "bare"])
def test_filesystem_api_and_tcp_probe_in_images_without_tools(
    make_emulator: Callable[..., Emu], app_image: PushedImage, bare_image: PushedImage, which: str
) -> None:
    ref = app_image.reference if which == "busybox" else bare_image.reference
    emu = make_emulator()
    sb = emu.sandbox(
        "httpd",
        "-f",
        "-p",
        "8000",
        "-h",
        "/www",
        image=modal.Image.from_registry(ref),
        readiness_probe=modal.Probe.with_tcp(8000),
    )
    sb.wait_until_ready(timeout=60)  # read from the host: no cat needed inside
    if which == "bare":
        assert sb.exec("cat", "/www/index.html").wait() == 127  # no tools at all
        assert sb.exec("sh", "-c", "true").wait() == 127
    fs = sb.filesystem
    fs.write_text("written\n", "/tmp/new/dir/file.txt")
    assert fs.read_text("/tmp/new/dir/file.txt") == "written\n"
    assert fs.read_text("/www/index.html") in ("served from the image\n", "bare\n")
    names = {e.name for e in fs.list_files("/")}
    assert "www" in names and "lib" not in names  # the image's root, not the host's
    entry = fs.stat("/etc/passwd")
    assert entry.owner == "root"  # from the image's /etc/passwd
    fs.remove("/tmp/new", recursive=True)
    assert "new" not in {e.name for e in fs.list_files("/tmp")}


def test_host_image_patterns_map_matching_references_to_the_host(
    make_emulator: Callable[..., Emu], app_image: PushedImage, bare_image: PushedImage
) -> None:
    emu = make_emulator(images="pull", host_images=("*/emu/app:*",))
    on_host = emu.sandbox(image=modal.Image.from_registry(app_image.reference))
    assert on_host.exec("test", "-d", "/usr/bin").wait() == 0
    pulled = emu.sandbox("sleep", "100", image=modal.Image.from_registry(bare_image.reference))
    assert pulled.exec("test", "-d", "/usr/bin").wait() == 127  # no `test` in there: pulled


def test_volumes_mount_anywhere_in_an_image_root(
    make_emulator: Callable[..., Emu], app_image: PushedImage
) -> None:
    """An image root is the sandbox's own and writable: a volume mounts at any path, and the
    entrypoint (started once it is mounted) sees it."""
    emu = make_emulator()
    vol = modal.Volume.from_name("img-vol", create_if_missing=True, client=emu.client)
    image = modal.Image.from_registry(app_image.reference)
    first = emu.sandbox(
        "sh", "-c", "echo hi > /data/x/hi.txt", image=image, volumes={"/data/x": vol}
    )
    first.wait()
    assert first.returncode == 0
    second = emu.sandbox("cat", "/data/x/hi.txt", image=image, volumes={"/data/x": vol})
    assert second.stdout.read() == "hi\n"
    second.wait()
    assert second.returncode == 0
