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
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pytest_modal_sandbox._paths import cache_root
from pytest_modal_sandbox.images import ImageStore
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    # Under the real cache root (as the plugin's cache): file creation costs differ a lot
    # between directories on some machines (e.g. a watched /tmp), so measure where it matters.
    work = Path(tempfile.mkdtemp(prefix="bench-images-", dir=cache_root()))
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
