"""Pulls from a real docker-registry on 127.0.0.1: layers, lists, digests, cache, auth, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inner_runs import ADDOPTS
from pytest_modal_sandbox.images import (
    ImageAccessDenied,
    ImageDigestMismatch,
    ImageNotFound,
    ImageReferenceError,
    ImageStore,
    LayerError,
    PlatformNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from registry import (
    HTPASSWD_PASSWORD,
    HTPASSWD_USER,
    FlakyProxy,
    LocalRegistry,
    busybox_layer,
    directory,
    file,
    hardlink,
    needs_openssl,
    needs_zstd,
    opaque,
    symlink,
    whiteout,
)

SMALL = [[directory("bin"), file("bin/tool", "#!/bin/sh\necho hi\n", mode=0o755)]]


def _leftovers(store: ImageStore) -> list[str]:
    return [p.name for p in (store.root / "tmp").iterdir()]


def test_multi_layer_image(registry: LocalRegistry, store: ImageStore) -> None:
    image = registry.push_image(
        "pull/multi",
        "v1",
        [
            busybox_layer(),
            [
                directory("srv"),
                file("srv/index.html", "<h1>v1</h1>"),
                file("srv/old.txt"),
                directory("cache"),
                file("cache/a"),
                hardlink("srv/same.html", "srv/index.html"),
                symlink("srv/link", "index.html"),
            ],
            [whiteout("srv/old.txt"), opaque("cache"), file("cache/b", "new")],
        ],
        env={"GREETING": "hello world", "PATH": "/usr/bin:/bin"},
        workdir="/srv",
        cmd=["httpd", "-f"],
        entrypoint=["/bin/sh", "-c"],
        user="nobody",
    )
    root = store.get(image.reference)
    assert root.reference == image.reference
    assert root.digest == root.manifest_digest == image.digest
    assert root.config_digest == image.config_digest
    assert root.path.is_relative_to(store.root)
    assert dict(root.env) == {"GREETING": "hello world", "PATH": "/usr/bin:/bin"}
    assert (root.workdir, root.user) == ("/srv", "nobody")
    assert root.cmd == ("httpd", "-f") and root.entrypoint == ("/bin/sh", "-c")
    assert root.platform == "linux/amd64"
    fs = root.path
    assert (fs / "bin/busybox").stat().st_size == Path("/bin/busybox").stat().st_size
    assert os.readlink(fs / "bin/sh") == "busybox"
    assert not (fs / "srv/old.txt").exists()
    assert sorted(p.name for p in (fs / "cache").iterdir()) == ["b"]
    assert os.lstat(fs / "srv/same.html").st_ino == os.lstat(fs / "srv/index.html").st_ino
    assert (fs / "srv/link").read_text() == "<h1>v1</h1>"
    assert _leftovers(store) == []
    # the busybox in the image really runs
    out = subprocess.run([str(fs / "bin/busybox"), "echo", "ok"], capture_output=True, text=True)
    assert out.stdout == "ok\n"


@needs_zstd
def test_docker_media_types_and_zstd(registry: LocalRegistry, store: ImageStore) -> None:
    docker = registry.push_image("pull/docker", "v1", SMALL, docker_media_types=True)
    zstd = registry.push_image("pull/zstd", "v1", SMALL, compression="zstd")
    for image in (docker, zstd):
        assert (store.get(image.reference).path / "bin/tool").read_text().startswith("#!")


def test_manifest_list_resolves_to_the_platform(registry: LocalRegistry, tmp_path: Path) -> None:
    amd = registry.push_image("pull/multiarch", "amd64", [[file("arch", "amd64")]])
    arm = registry.push_image(
        "pull/multiarch", "arm64", [[file("arch", "arm64")]], architecture="arm64", variant="v8"
    )
    index = registry.push_index(
        "pull/multiarch", "latest", {"linux/amd64": amd, "linux/arm64/v8": arm}
    )
    host = ImageStore(tmp_path / "c").get(index.reference)
    assert (host.path / "arch").read_text() == "amd64"
    assert host.digest == index.digest and host.manifest_digest == amd.digest
    other = ImageStore(tmp_path / "c", platform="linux/arm64").get(index.reference)
    assert (other.path / "arch").read_text() == "arm64"
    with pytest.raises(PlatformNotFound, match=r"linux/s390x.*available: linux/amd64, linux/arm64"):
        ImageStore(tmp_path / "c", platform="linux/s390x").get(index.reference)
    docker_list = registry.push_index(
        "pull/multiarch", "docker", {"linux/amd64": amd}, docker_media_types=True
    )
    assert ImageStore(tmp_path / "c").get(docker_list.reference).config_digest == amd.config_digest


def test_digest_references(registry: LocalRegistry, store: ImageStore) -> None:
    image = registry.push_image("pull/pinned", "v1", SMALL)
    root = store.get(image.by_digest)
    assert root.digest == image.digest and root.reference.endswith("@" + image.digest)
    before = len(registry.requests())
    tagged = registry.push_image("pull/pinned", "v2", [[file("v2")]])
    store.get(tagged.reference)
    again = store.get(tagged.by_digest)  # pulled by tag before: served from the cache
    assert again.config_digest == tagged.config_digest
    assert again.reference == tagged.by_digest
    assert [
        r.path
        for r in registry.requests()[before:]
        if r.method == "GET" and "/manifests/" in r.path
    ] == ["/v2/pull/pinned/manifests/v2"]
    missing = image.by_digest[:-64] + "0" * 64
    with pytest.raises(ImageNotFound, match="has no digest"):
        store.get(missing)


def test_corrupted_blob_is_refused(registry: LocalRegistry, store: ImageStore) -> None:
    image = registry.push_image("pull/corrupt", "v1", [[file("big", os.urandom(200_000))]])
    registry.corrupt_blob(image.layer_digests[0])
    with pytest.raises(ImageDigestMismatch, match=image.layer_digests[0]):
        store.get(image.reference)
    blobs = {p.name for p in (store.root / "blobs/sha256").iterdir()}
    assert image.layer_digests[0].split(":")[1] not in blobs
    assert list((store.root / "roots").iterdir()) == []
    assert _leftovers(store) == []


def test_second_get_hits_the_cache_without_network(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("pull/cached", "v1", SMALL)
    first = ImageStore(tmp_path / "c").get(image.reference)
    before = len(registry.requests())
    again = ImageStore(tmp_path / "c").get(image.reference)  # a fresh store: state is on disk
    assert again.path == first.path
    assert len(registry.requests()) == before  # no request at all
    refreshed = ImageStore(tmp_path / "c").pull(image.reference)  # re-resolves the tag only
    new = registry.requests()[before:]
    assert refreshed.path == first.path
    assert [r.path for r in new] == ["/v2/pull/cached/manifests/v1"]


def test_tag_moves_are_seen_by_pull_always(registry: LocalRegistry, store: ImageStore) -> None:
    v1 = registry.push_image("pull/moving", "latest", [[file("version", "1")]])
    assert (store.get(v1.reference).path / "version").read_text() == "1"
    registry.push_image("pull/moving", "latest", [[file("version", "2")]])
    assert (store.get(v1.reference).path / "version").read_text() == "1"  # cached
    assert (store.get(v1.reference, pull="always").path / "version").read_text() == "2"


CONCURRENT = textwrap.dedent("""
    import json, sys, time
    from pytest_modal_sandbox.images import ImageStore
    start = float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    root = ImageStore(sys.argv[1]).get(sys.argv[2])
    print(json.dumps({"path": str(root.path)}))
""")


def test_concurrent_pulls_download_each_blob_once(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image(
        "pull/concurrent", "v1", [busybox_layer(), [file("data", os.urandom(3_000_000))]]
    )
    import time

    start = time.time() + 0.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(tmp_path / "c"), image.reference, str(start)],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    paths = {json.loads(o)["path"] for o in outs}
    assert len(paths) == 1
    counts = registry.blob_gets("pull/concurrent")
    wanted = {image.config_digest, *image.layer_digests}
    assert counts == dict.fromkeys(wanted, 1)


def test_bad_reference_missing_image_and_tag(registry: LocalRegistry, store: ImageStore) -> None:
    registry.push_image("pull/tags", "v1", SMALL)
    registry.push_image("pull/tags", "v2", SMALL)
    with pytest.raises(ImageReferenceError, match="lowercase"):
        store.get(f"{registry.host}/Pull/Tags")
    with pytest.raises(ImageNotFound) as info:
        store.get(f"{registry.host}/pull/nothing-here:v1")
    assert f"image {registry.host}/pull/nothing-here does not exist" in str(info.value)
    with pytest.raises(ImageNotFound) as info:
        store.get(f"{registry.host}/pull/tags:v3")
    assert "has no tag 'v3' (available tags: v1, v2)" in str(info.value)


def test_unreachable_registry_names_the_fix(store: ImageStore) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RegistryUnreachable) as info:
        store.get(f"127.0.0.1:{port}/some/image:1")
    message = str(info.value)
    assert f"cannot reach registry 127.0.0.1:{port}" in message
    assert "--modal-sandbox-local-images=host" in message
    assert "Connection refused" in message


def test_layer_with_dotdot_is_refused(registry: LocalRegistry, store: ImageStore) -> None:
    image = registry.push_image("pull/evil", "v1", [[file("ok")], [file("../../evil", "x")]])
    with pytest.raises(LayerError) as info:
        store.get(image.reference)
    assert "'../../evil' escapes the image root" in str(info.value)
    assert "2/2" in str(info.value)
    assert list((store.root / "roots").iterdir()) == []
    assert _leftovers(store) == []


def test_mirror_serves_docker_hub_images(registry: LocalRegistry, tmp_path: Path) -> None:
    registry.push_image("library/mirrored", "v1", [[file("from", "mirror")]])
    root = ImageStore(tmp_path / "c", mirror=registry.host).get("mirrored:v1")
    assert root.reference == "docker.io/library/mirrored:v1"
    assert (root.path / "from").read_text() == "mirror"


def test_basic_auth(
    registry_factory: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: LocalRegistry = registry_factory(auth="htpasswd")  # type: ignore[operator]
    image = reg.push_image("private/app", "v1", SMALL)
    with pytest.raises(ImageAccessDenied, match="needs credentials"):
        ImageStore(tmp_path / "a").get(image.reference)
    monkeypatch.setenv(
        "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH", json.dumps({reg.host: f"{HTPASSWD_USER}:wrong"})
    )
    with pytest.raises(RegistryAuthError, match="credentials of 'alice' were refused"):
        ImageStore(tmp_path / "b").get(image.reference)
    monkeypatch.delenv("PYTEST_MODAL_SANDBOX_REGISTRY_AUTH")
    import base64

    auth = base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()).decode()
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"auths": {f"http://{reg.host}": {"auth": auth}}})
    )
    root = ImageStore(tmp_path / "c").get(image.reference)
    assert (root.path / "bin/tool").exists()


@needs_openssl
def test_bearer_token_auth(
    registry_factory: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: LocalRegistry = registry_factory(auth="token", anonymous_pull=("public/",))  # type: ignore[operator]
    private = reg.push_image("private/app", "v1", SMALL)
    public = reg.push_image("public/app", "v1", SMALL)
    assert reg.token_server is not None
    seen = len(reg.token_server.requests)
    # anonymous token for a public repository
    assert (ImageStore(tmp_path / "a").get(public.reference).path / "bin/tool").exists()
    anon = reg.token_server.requests[seen:]
    assert anon and all(r["user"] is None for r in anon)
    assert anon[0]["query"]["scope"] == ["repository:public/app:pull"]
    assert anon[0]["query"]["service"] == ["test-registry"]
    with pytest.raises(ImageAccessDenied, match="does not exist or needs credentials"):
        ImageStore(tmp_path / "b").get(private.reference)
    monkeypatch.setenv(
        "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH",
        json.dumps({reg.host: {"username": HTPASSWD_USER, "password": "nope"}}),
    )
    with pytest.raises(RegistryAuthError, match="refused the credentials for 'alice'"):
        ImageStore(tmp_path / "c").get(private.reference)
    monkeypatch.setenv(
        "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH",
        json.dumps({reg.host: f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"}),
    )
    seen = len(reg.token_server.requests)
    assert (ImageStore(tmp_path / "d").get(private.reference).path / "bin/tool").exists()
    assert [r["user"] for r in reg.token_server.requests[seen:]] == [HTPASSWD_USER]  # one token


def test_list_and_prune(registry: LocalRegistry, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "c")
    a = store.get(registry.push_image("prune/a", "v1", [[file("a", "1")]]).reference)
    b = store.get(registry.push_image("prune/b", "v1", [[file("b", "2")]]).reference)
    listed = {c.config_digest: c for c in store.list()}
    assert set(listed) == {a.config_digest, b.config_digest}
    assert listed[a.config_digest].references == (a.reference,)
    assert listed[a.config_digest].size == 1
    assert store.prune(unused_for=3600) == []  # both just used
    with a.use():
        assert store.list()[0].in_use or store.list()[1].in_use
        removed = store.prune()
        assert [r.config_digest for r in removed] == [b.config_digest]
    assert not b.path.exists() and a.path.exists()
    blobs = {p.name for p in (store.root / "blobs/sha256").iterdir()}
    assert b.config_digest.split(":")[1] not in blobs
    assert a.config_digest.split(":")[1] in blobs
    assert [r.config_digest for r in store.prune()] == [a.config_digest]
    assert store.list() == []
    assert list((store.root / "blobs/sha256").iterdir()) == []
    assert list((store.root / "refs").iterdir()) == []


def test_xdist_workers_share_the_cache(
    registry: LocalRegistry, tmp_path: Path, pytester: pytest.Pytester
) -> None:
    image = registry.push_image(
        "pull/xdist", "v1", [busybox_layer(), [file("data", os.urandom(2_000_000))]]
    )
    cache = tmp_path / "shared-cache"
    pytester.makepyfile(
        test_inner=f"""
        import pytest
        from pytest_modal_sandbox.images import ImageStore

        @pytest.mark.parametrize("n", range(4))
        def test_pull(n):
            root = ImageStore({str(cache)!r}).get({image.reference!r})
            assert (root.path / "data").stat().st_size == 2_000_000
    """
    )
    # the workers are the processes that share the cache; their controller can be this one
    result = pytester.runpytest_inprocess("-n", "2", "-p", "xdist", *ADDOPTS.split())
    result.assert_outcomes(passed=4)
    counts = registry.blob_gets("pull/xdist")
    assert counts == dict.fromkeys({image.config_digest, *image.layer_digests}, 1)


def test_dropped_blob_downloads_are_retried(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("pull/flaky", "v1", [[file("data", os.urandom(500_000))]])
    proxy = FlakyProxy(registry, drop_blobs=1)
    try:
        ref = image.reference.replace(registry.host, proxy.host)
        root = ImageStore(tmp_path / "a").get(ref)
        assert (root.path / "data").stat().st_size == 500_000
        assert proxy.blob_gets == 3  # config cut in half, the rest of the config, layer
        config = registry.http("GET", f"/v2/pull/flaky/blobs/{image.config_digest}")[2]
        assert proxy.ranges == [None, f"bytes={len(config) // 2}-", None]  # resumed at the cut
        proxy.drop_blobs = 10
        store = ImageStore(tmp_path / "b")
        with pytest.raises(RegistryUnreachable, match="cannot reach registry"):
            store.get(ref)
        assert _leftovers(store) == []
        blobs = {p.name for p in (store.root / "blobs/sha256").iterdir()}
        assert image.layer_digests[0].split(":")[1] not in blobs
    finally:
        proxy.close()


def test_progress_messages_only_when_pulling(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image(
        "pull/progress", "v1", [[file("a", "1")], [file("b", "2")], [file("c", "3")]]
    )
    messages: list[str] = []
    store = ImageStore(tmp_path / "c", progress=messages.append)
    root = store.get(image.reference)
    assert messages[0].startswith(f"pulling {image.reference}: 3 layer(s)")
    assert [m.split(" (")[0] for m in messages[1:4]] == [
        "unpacking layer 1/3",
        "unpacking layer 2/3",
        "unpacking layer 3/3",
    ]
    assert messages[-1] == f"unpacked {image.reference} (0.0 MiB)"
    assert sorted(p.name for p in root.path.iterdir()) == ["a", "b", "c"]
    messages.clear()
    store.get(image.reference)
    assert messages == []


def test_blob_redirects_do_not_carry_credentials(
    registry_factory: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: LocalRegistry = registry_factory(auth="htpasswd")  # type: ignore[operator]
    image = reg.push_image("private/cdn", "v1", [[file("a", "1")], [file("b", "2")]])
    front = FlakyProxy(reg, cdn=True)
    try:
        monkeypatch.setenv(
            "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH",
            json.dumps({front.host: f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"}),
        )
        root = ImageStore(tmp_path / "c").get(image.reference.replace(reg.host, front.host))
        assert (root.path / "b").read_text() == "2"
        assert front.cdn is not None and len(front.cdn.seen) == 3  # config + 2 layers
        assert front.authorized >= 4  # manifest + 3 blob requests to the registry itself
        assert all("Authorization" not in h for h in front.cdn.seen)
    finally:
        front.close()


def test_busy_registries_are_asked_again(registry: LocalRegistry, tmp_path: Path) -> None:
    image = registry.push_image("pull/busy", "v1", SMALL)
    # 503 and 429 with Retry-After (seconds, then an HTTP date in the past), then the answers
    proxy = FlakyProxy(
        registry,
        answers=[
            (503, {"Retry-After": "0"}),
            (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        ],
    )
    try:
        ref = image.reference.replace(registry.host, proxy.host)
        assert (ImageStore(tmp_path / "a").get(ref).path / "bin/tool").exists()
        assert [status for _, status in proxy.statuses[:3]] == [503, 429, 200]
        # a registry that stays down: three attempts, then an error that says so
        proxy.answers = [(502, {"Retry-After": "0"})] * 3
        with pytest.raises(RegistryError, match=r"HTTP 502 .*\(3 attempts\)"):
            ImageStore(tmp_path / "b").get(ref)
        assert proxy.answers == []
        # one that asks for a long wait: not waited for, and the message names the way out
        proxy.answers = [(429, {"Retry-After": "3600"})]
        with pytest.raises(RegistryError) as info:
            ImageStore(tmp_path / "c").get(ref)
        assert "HTTP 429; it asked to retry after 3600 s" in str(info.value)
        assert "use a mirror" in str(info.value)
    finally:
        proxy.close()


def test_a_manifest_that_is_not_what_the_registry_sent_is_refused(
    registry: LocalRegistry, store: ImageStore
) -> None:
    image = registry.push_image("pull/tampered", "v1", SMALL)
    proxy = FlakyProxy(registry, tamper_manifests=True)
    try:
        with pytest.raises(ImageDigestMismatch, match=r"Docker-Content-Digest.*not used") as info:
            store.get(image.reference.replace(registry.host, proxy.host))
        assert image.digest in str(info.value)
        assert list((store.root / "roots").iterdir()) == []
    finally:
        proxy.close()


def test_resuming_a_blob_copes_with_what_the_server_sends(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """RegistryClient.blob continues a cut download; a server that ignores Range is read whole."""
    from pytest_modal_sandbox.images.client import RegistryClient

    data = os.urandom(100_000)
    image = registry.push_image("pull/resume", "v1", [[file("data", data)]])
    digest = image.layer_digests[0]
    blob = registry.http("GET", f"/v2/pull/resume/blobs/{digest}")[2]
    client = RegistryClient(registry.host)
    out = tmp_path / "partial"
    out.write_bytes(blob[:1000])  # a cut download: the registry sends the rest (206)
    with open(out, "a+b") as f:
        assert client.blob("pull/resume", digest, f, size=len(blob)) == len(blob)
    assert out.read_bytes() == blob
    out.write_bytes(blob[:1000])  # behind a CDN that ignores Range (200, the whole blob)
    front = FlakyProxy(registry, cdn=True)
    try:
        cdn = RegistryClient(front.host)
        with open(out, "a+b") as f:
            assert cdn.blob("pull/resume", digest, f, size=len(blob)) == len(blob)
        assert out.read_bytes() == blob
        assert front.cdn is not None and front.cdn.seen[-1].get("Range") == "bytes=1000-"
    finally:
        front.close()
    out.write_bytes(b"x" * 1000)  # what we had was not this blob's start: refused, not kept
    with open(out, "a+b") as f, pytest.raises(ImageDigestMismatch, match=digest):
        client.blob("pull/resume", digest, f, size=len(blob))
