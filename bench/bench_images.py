"""Image cache benchmark: cold pull+unpack, warm get (cache hit), and sandbox start in an image
versus the host mapping.

    .venv/bin/python bench/bench_images.py [--reps N]

Starts a real docker-registry on 127.0.0.1 (tests/registry.py), pushes two images built here
(busybox-static: 2 MB, ~400 symlinks; and busybox + the host's Python stdlib as a second layer:
~40 MB, thousands of files, closer to a real application image), then times:

* cold: ``ImageStore(<empty cache>).get(ref)``: manifest, blobs, verification, unpack, publish;
* warm: ``ImageStore(<same cache>).get(ref)`` in a fresh store: the cache hit a test pays;
* sandbox: create -> exec("true") -> terminate on the local runtime with the host mapping, and
  in the busybox image (``rootfs=``) with an overlayfs root and with a copied root.

``--libraries`` (after ``.venv/bin/pip install python-dxf oras``) compares our registry client
with python-dxf and oras instead (docs/reference/image-registry.md): their added packages and
import cost, a verified fetch of the same two images by each (medians), and each capability
(auth kinds, Docker credentials, indexes, corrupted blobs, error messages) against plain,
htpasswd and token-auth registries.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pytest_modal_sandbox._paths import cache_root
from pytest_modal_sandbox.images import ImageStore
from pytest_modal_sandbox.images.auth import Credentials
from pytest_modal_sandbox.images.client import MANIFEST_TYPES, RegistryClient
from pytest_modal_sandbox.images.manifest import (
    Platform,
    is_index,
    parse_manifest,
    select_platform,
)
from pytest_modal_sandbox.images.unpack import remove_tree
from registry import LocalRegistry, busybox_layer

ROOTFS_MODE_ENV = "PYTEST_MODAL_SANDBOX_ROOTFS"  # the runtime's switch: "overlay" or "copy"


def stdlib_layer() -> bytes:
    """A raw tar of the host's Python stdlib under usr/lib/pythonX.Y (no caches)."""
    src = Path(sysconfig.get_paths()["stdlib"])
    buf = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in info.name or "site-packages" in info.name:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=f"usr/lib/{src.name}", filter=keep)
    return buf.getvalue()


def timed(
    fn: Callable[[], object], reps: int, setup: Callable[[], object] | None = None
) -> list[float]:
    out = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"| {label:<48} | {'n/a':>9} | {'n/a':>9} |"
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"| {label:<48} | {statistics.median(ordered):9.2f} | {p90:9.2f} |"


def sandbox_samples(rootfs: str | None, reps: int) -> list[float] | str:
    try:
        from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
    except ImportError as exc:
        return f"runtime not importable: {exc}"
    runtime = LocalRuntime(tempfile.mkdtemp(prefix="bench-images-state-"))
    try:
        LocalRuntime.check()
        probe = runtime.create(SandboxConfig(rootfs=rootfs))
        probe.terminate(wait=True)
    except Exception as exc:  # the runtime may not support rootfs yet
        return f"{type(exc).__name__}: {exc}"

    def once() -> None:
        sb = runtime.create(SandboxConfig(rootfs=rootfs))
        result = sb.exec(["true"])
        assert result.returncode == 0, result
        sb.terminate(wait=True)

    try:
        return timed(once, reps)
    finally:
        runtime.close()


# -- registry client libraries (issue 13): ours against python-dxf and oras ---------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFESTS = (OCI_INDEX, DOCKER_LIST, *(t for t in MANIFEST_TYPES if "index" not in t))


@dataclasses.dataclass(frozen=True)
class Target:
    """What to fetch: ``repo:ref`` on ``host``, as ``platform``, with these credentials."""

    host: str
    repo: str
    ref: str
    platform: str = "linux/amd64"
    creds: tuple[str, str] | None = None
    scheme: str = "token"  # what oras must be told up front: "token" or "basic"


def _save(out: Path, digest: str, chunks: Iterable[bytes]) -> None:
    with open(out / digest.split(":", 1)[1], "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def fetch_ours(t: Target, out: Path, verify: bool = True) -> int:
    """Manifest (platform resolved), config and layers into ``out``: every byte verified."""
    creds = Credentials(*t.creds) if t.creds else None
    client = RegistryClient(t.host, credentials=creds)
    body, media_type, _ = client.manifest(t.repo, t.ref)
    if is_index(body, media_type):
        desc = select_platform(body, t.ref, Platform.parse(t.platform))
        body, media_type, _ = client.manifest(t.repo, desc.digest)
    config, layers = parse_manifest(body, media_type, t.ref)
    for d in (config, *layers):
        with open(out / d.digest.split(":", 1)[1], "a+b") as f:
            client.blob(t.repo, d.digest, f, size=d.size)
    return 1 + len(layers)


def fetch_dxf(t: Target, out: Path, verify: bool = True) -> int:
    """python-dxf: ``get_manifest(platform=)`` then ``pull_blob`` (which hashes as it streams)."""
    import dxf

    def auth(client: Any, response: Any) -> None:
        client.authenticate(*(t.creds or (None, None)), response=response)

    with dxf.DXF(t.host, t.repo, auth=auth, insecure=True, timeout=30) as client:
        manifest = json.loads(client.get_manifest(t.ref, platform=t.platform))
        digests = [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]
        for digest in digests:
            _save(out, digest, client.pull_blob(digest, chunk_size=1 << 20))
    return len(digests)


def fetch_oras(t: Target, out: Path, verify: bool = True) -> int:
    """oras: ``get_manifest`` and ``download_blob``.  oras picks no platform and hashes nothing:
    with ``verify`` the adapter does both by hand (what a switch would have to add)."""
    import oras.provider

    client = oras.provider.Registry(hostname=t.host, insecure=True, auth_backend=t.scheme)
    if t.creds:
        client.auth.set_basic_auth(*t.creds)
    at = "@" if t.ref.startswith("sha256:") else ":"
    manifest = client.get_manifest(f"{t.host}/{t.repo}{at}{t.ref}", list(ALL_MANIFESTS))
    if "manifests" in manifest and not verify:
        raise LookupError("oras returned the index as it is: it selects no platform")
    if "manifests" in manifest:
        desc = select_platform(json.dumps(manifest).encode(), t.ref, Platform.parse(t.platform))
        manifest = client.get_manifest(f"{t.host}/{t.repo}@{desc.digest}", list(ALL_MANIFESTS))
    descs = [manifest["config"], *manifest["layers"]] if "config" in manifest else []
    for d in descs:
        path = out / d["digest"].split(":", 1)[1]
        client.download_blob(f"{t.host}/{t.repo}", d["digest"], str(path))
        if verify:
            actual = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            if actual != d["digest"]:
                path.unlink()
                raise ValueError(f"blob {d['digest']} has digest {actual}")
    return len(descs)


CLIENTS: dict[str, Callable[..., int]] = {
    "ours": fetch_ours,
    "python-dxf": fetch_dxf,
    "oras": fetch_oras,
}


def outcome(fn: Callable[[], object], limit: float = 20.0) -> tuple[str, float]:
    """(what happened, seconds), giving up waiting after ``limit`` s (the call runs on)."""
    box: dict[str, str] = {}

    def run() -> None:
        try:
            box["r"] = f"ok ({fn()} blobs)"
        except BaseException as exc:
            text = " ".join(str(exc).split())
            box["r"] = f"{type(exc).__name__}: {text[:160]}"

    start = time.perf_counter()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    took = time.perf_counter() - start
    return box.get("r", f"no answer after {limit:.0f} s (still retrying)"), took


def import_costs(codes: dict[str, str], reps: int) -> dict[str, float]:
    """Median ms each code's imports add to a fresh interpreter; the runs are interleaved so
    that load from elsewhere on the machine falls on all of them alike."""

    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return (time.perf_counter() - start) * 1000

    samples: dict[str, list[float]] = {name: [] for name in ("", *codes)}
    for _ in range(reps):
        for name, code in (("", "pass"), *codes.items()):
            samples[name].append(run(code))
    base = statistics.median(samples.pop(""))
    return {name: statistics.median(times) - base for name, times in samples.items()}


def added_dependencies(dist: str) -> tuple[list[str], int]:
    """Distributions ``dist`` pulls in here that pytest-modal-sandbox does not, and their bytes."""
    from packaging.requirements import Requirement

    def closure(name: str, seen: set[str]) -> set[str]:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            return seen
        seen.add(key)
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                closure(req.name, seen)
        return seen

    ours = closure("pytest-modal-sandbox", set())
    new = sorted(closure(dist, set()) - ours)
    size = 0
    for name in new:
        for path in importlib.metadata.files(name) or []:
            with contextlib.suppress(OSError):
                size += Path(str(path.locate())).stat().st_size
    return new, size


def compare_libraries(work: Path, reps: int) -> None:
    """Same images, same registry, one run: the three clients side by side, then capabilities."""
    registry = LocalRegistry(work / "plain")
    basic = LocalRegistry(work / "basic", auth="htpasswd")
    token = LocalRegistry(work / "token", auth="token", anonymous_pull=("public/",))
    try:
        print("## versions, weight, import cost\n")
        print("| client | version | added distributions | added MB | import ms (median) |")
        print("|---|---|---|---|---|")
        package = "import pytest_modal_sandbox.images"  # today's client is in there
        costs = import_costs(
            {
                "ours": package,
                "python-dxf": f"{package}, dxf",
                "oras": f"{package}, oras.provider",
            },
            reps * 3,
        )
        print(f"| ours | - | none | 0 | {costs['ours']:.0f} (images/) |")
        for dist, module in (("python-dxf", "dxf"), ("oras", "oras.provider")):
            new, size = added_dependencies(dist)
            print(
                f"| {dist} | {importlib.metadata.version(dist)} | {', '.join(new)} | "
                f"{size / 1e6:.1f} | {costs[dist]:.0f} (images/ + {module}) |"
            )

        small = registry.push_image("bench/busybox", "v1", [busybox_layer()])
        big = registry.push_image("bench/python-stdlib", "v1", [busybox_layer(), stdlib_layer()])
        print("\n## fetch: manifest + config + layers to disk, digest-verified, sequential\n")
        print(f"| image | {' | '.join(f'{n} p50 ms' for n in CLIENTS)} |")
        print(f"|---|{'---|' * len(CLIENTS)}")
        for image in (small, big):
            target = Target(registry.host, image.name, image.tag)
            samples: dict[str, list[float]] = {name: [] for name in CLIENTS}
            for rep in range(reps):
                names = list(CLIENTS)
                names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate order
                for name in names:
                    out = work / f"fetch-{name}"
                    out.mkdir()
                    start = time.perf_counter()
                    CLIENTS[name](target, out)
                    samples[name].append((time.perf_counter() - start) * 1000)
                    remove_tree(out)
            cells = " | ".join(f"{statistics.median(samples[n]):.1f}" for n in CLIENTS)
            print(f"| {image.name} | {cells} |")

        print("\n## capabilities (each library as it comes: no verification added by hand)\n")
        probes = capability_probes(work, registry, basic, token)
        print(f"| case | {' | '.join(CLIENTS)} |")
        print(f"|---|{'---|' * len(CLIENTS)}")
        for label, case in probes:
            cells = []
            for name, fetch in CLIENTS.items():
                out = work / f"probe-{name}"
                out.mkdir()
                with case() as target:
                    result, took = outcome(lambda f=fetch, o=out, t=target: f(t, o, False))
                if label.startswith("error:") and result.startswith("ok"):
                    result = f"NO ERROR, {result}"
                cells.append(f"{result} [{took:.2f} s]".replace("|", "/"))
                remove_tree(out)
            print(f"| {label} | {' | '.join(cells)} |")
    finally:
        for reg in (registry, basic, token):
            reg.close()


Case = Callable[[], contextlib.AbstractContextManager[Target]]


def capability_probes(
    work: Path, plain: LocalRegistry, basic: LocalRegistry, token: LocalRegistry
) -> list[tuple[str, Case]]:
    """Each capability of the issue as a case: a context that sets the scene and yields a target."""
    from registry import HTPASSWD_PASSWORD, HTPASSWD_USER, file

    user = (HTPASSWD_USER, HTPASSWD_PASSWORD)
    small = [[file("a", "1")]]
    amd = plain.push_image("caps/multi", "amd64", [[file("arch", "amd64")]])
    arm = plain.push_image(
        "caps/multi", "arm64", [[file("arch", "arm64")]], architecture="arm64", variant="v8"
    )
    plain.push_index("caps/multi", "oci", {"linux/amd64": amd, "linux/arm64/v8": arm})
    plain.push_index(
        "caps/multi", "docker", {"linux/amd64": amd, "linux/arm64/v8": arm}, docker_media_types=True
    )
    corrupt = plain.push_image("caps/corrupt", "v1", [[file("big", os.urandom(100_000))]])
    plain.corrupt_blob(corrupt.layer_digests[0])
    basic.push_image("private/app", "v1", small)
    token.push_image("public/app", "v1", small)
    token.push_image("private/app", "v1", small)
    home = work / "home"
    helpers = work / "helpers"
    helpers.mkdir()
    helper = helpers / "docker-credential-bench"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        f'echo \'{{"ServerURL":"\'$server\'","Username":"{user[0]}","Secret":"{user[1]}"}}\'\n'
    )
    helper.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"

    @contextlib.contextmanager
    def docker_config(config: dict[str, Any], target: Target) -> Iterator[Target]:
        """``~/.docker/config.json`` (oras reads only that path) and ``$DOCKER_CONFIG``."""
        (home / ".docker").mkdir(parents=True, exist_ok=True)
        (home / ".docker" / "config.json").write_text(json.dumps(config))
        saved = {k: os.environ.get(k) for k in ("HOME", "DOCKER_CONFIG", "PATH")}
        os.environ.update(
            HOME=str(home),
            DOCKER_CONFIG=str(home / ".docker"),
            PATH=f"{helpers}:{os.environ['PATH']}",
        )
        try:
            yield target
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            remove_tree(home)

    def plain_case(target: Target) -> Case:
        return lambda: docker_config({}, target)  # an empty config: no stray credentials

    auth = base64.b64encode(":".join(user).encode()).decode()
    return [
        ("anonymous pull", plain_case(Target(plain.host, "caps/multi", "amd64"))),
        ("OCI index, linux/amd64", plain_case(Target(plain.host, "caps/multi", "oci"))),
        (
            "Docker list, linux/arm64 (entry is arm64/v8)",
            plain_case(Target(plain.host, "caps/multi", "docker", "linux/arm64")),
        ),
        (
            "pinned manifest digest",
            plain_case(Target(plain.host, "caps/multi", amd.digest)),
        ),
        (
            "basic auth (htpasswd), credentials given",
            plain_case(Target(basic.host, "private/app", "v1", creds=user, scheme="basic")),
        ),
        (
            "bearer token, anonymous (public repo)",
            plain_case(Target(token.host, "public/app", "v1")),
        ),
        (
            "bearer token, credentials given",
            plain_case(Target(token.host, "private/app", "v1", creds=user)),
        ),
        (
            "Docker config auths (basic registry)",
            lambda: docker_config(
                {"auths": {basic.host: {"auth": auth}}},
                Target(basic.host, "private/app", "v1", scheme="basic"),
            ),
        ),
        (
            "Docker config credHelpers (token registry)",
            lambda: docker_config(
                {"credHelpers": {token.host: "bench"}}, Target(token.host, "private/app", "v1")
            ),
        ),
        ("error: corrupted layer blob", plain_case(Target(plain.host, "caps/corrupt", "v1"))),
        ("error: unknown image", plain_case(Target(plain.host, "caps/nothing", "v1"))),
        ("error: unknown tag", plain_case(Target(plain.host, "caps/multi", "v9"))),
        (
            "error: wrong password (basic)",
            plain_case(
                Target(basic.host, "private/app", "v1", creds=(user[0], "wrong"), scheme="basic")
            ),
        ),
        (
            "error: no credentials (token, private)",
            plain_case(Target(token.host, "private/app", "v1")),
        ),
        ("error: registry unreachable", plain_case(Target(closed, "caps/multi", "v1"))),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument(
        "--libraries",
        action="store_true",
        help="compare our registry client with python-dxf and oras (pip install them first)",
    )
    args = parser.parse_args()
    # Under the real cache root (as the plugin's cache): file creation costs differ a lot
    # between directories on some machines (e.g. a watched /tmp), so measure where it matters.
    work = Path(tempfile.mkdtemp(prefix="bench-images-", dir=cache_root()))
    if args.libraries:
        try:
            compare_libraries(work, args.reps)
        finally:
            remove_tree(work)
        return 0
    registry = LocalRegistry(work / "registry")
    try:
        small = registry.push_image("bench/busybox", "v1", [busybox_layer()])
        big_layer = stdlib_layer()
        big = registry.push_image("bench/python-stdlib", "v1", [busybox_layer(), big_layer])
        with tarfile.open(fileobj=io.BytesIO(big_layer)) as tar:
            entries = len(tar.getmembers())
        print(
            f"busybox image: 1 layer; stdlib image: +{len(big_layer) / 2**20:.0f} MiB raw tar, "
            f"{entries} entries"
        )
        rows = []
        for label, image, reps in (
            ("busybox", small, args.reps),
            ("stdlib", big, max(3, args.reps // 3)),
        ):
            cache = work / f"cache-{label}"

            def reset(cache: Path = cache) -> None:
                if cache.exists():
                    remove_tree(cache)

            ref = image.reference
            cold = timed(lambda ref=ref, cache=cache: ImageStore(cache).get(ref), reps, reset)
            warm = timed(lambda ref=ref, cache=cache: ImageStore(cache).get(ref), args.reps * 5)
            rows.append(row(f"{label}: cold pull + verify + unpack", cold))
            rows.append(row(f"{label}: warm get (cache hit, new ImageStore)", warm))
        root = ImageStore(work / "cache-busybox").get(small.reference)
        host = sandbox_samples(None, args.reps)
        os.environ[ROOTFS_MODE_ENV] = "overlay"
        overlay = sandbox_samples(str(root.path), args.reps)
        os.environ[ROOTFS_MODE_ENV] = "copy"
        copy = sandbox_samples(str(root.path), args.reps)
        os.environ.pop(ROOTFS_MODE_ENV)
        notes = []
        for label, samples in (
            ("sandbox create->exec->terminate, host mapping", host),
            ("sandbox ..., busybox image (overlay root)", overlay),
            ("sandbox ..., busybox image (copied root)", copy),
        ):
            if isinstance(samples, str):
                rows.append(row(label, []))
                notes.append(f"{label}: {samples}")
            else:
                rows.append(row(label, samples))
        print(f"| {'operation':<48} | {'p50 ms':>9} | {'p90 ms':>9} |")
        print(f"|{'-' * 50}|{'-' * 11}|{'-' * 11}|")
        print("\n".join(rows))
        for note in notes:
            print("note:", note)
    finally:
        registry.close()
        remove_tree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
