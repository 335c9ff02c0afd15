"""Local runtime benchmark: what a function-scoped sandbox costs, and tunnel latency.

    .venv/bin/python bench/bench_runtime.py [--reps N]

Times, with a private state dir and real sandboxes:

* cycle: create -> exec("true") -> terminate, no daemon (the plugin's finalizer does not wait
  for the end: ``terminate()``); budget p50 < 50 ms;
* the same cycle with ``terminate(wait=True)`` (everything gone when it returns);
* each step alone: create, exec("true"), terminate(wait=True);
* tunnel: first ``tunnel(port)`` call (listener + namespace socket maker), then TCP connect
  through the tunnel to a server inside until its first byte arrives (plain, setns path);
* the same connect through the relay helper (the non-root path);
* create -> exec("true") -> terminate() in an image root (a busybox-static root built here,
  ~400 entries): overlayfs and copy (``cp -a``; its cost grows with the image).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig, rootfs
from pytest_modal_sandbox.runtime.netns import MODE_ENV

SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8000)); s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'x'); c.close()\n"
)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90, ordered[-1]


def settle(rt: LocalRuntime) -> None:
    """Let sandboxes ended without waiting finish tearing down before the next row."""
    for sb in rt.list():
        sb.wait(30)


def timed(fn: Callable[[], object], reps: int, rt: LocalRuntime | None = None) -> list[float]:
    if rt is not None:
        settle(rt)
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def connect_once(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as c:
        if c.recv(1) != b"x":
            raise RuntimeError("no byte from the server behind the tunnel")


def sandbox_python() -> str:
    """A Python the host-image sandbox shows: a system one (home directories are hidden)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    return os.path.realpath(sys.executable)


def tunnel_rows(rt: LocalRuntime, reps: int, label: str) -> list[tuple[str, list[float]]]:
    sb = rt.create(SandboxConfig(command=[sandbox_python(), "-c", SERVER], ports=[8000]))
    try:
        deadline = time.monotonic() + 30
        while b"00000000:1F40" not in sb.exec(["cat", "/proc/net/tcp"]).stdout.upper():
            if time.monotonic() > deadline:
                raise RuntimeError("the server in the sandbox did not listen")
            time.sleep(0.02)
        start = time.perf_counter()
        address = sb.tunnel(8000)
        first = [(time.perf_counter() - start) * 1000]
        connect_once(address)  # warm
        return [
            (f"tunnel(): first call ({label})", first),
            (f"connect + first byte ({label})", timed(lambda: connect_once(address), reps)),
        ]
    finally:
        sb.terminate(wait=True)
        rt.close()


def busybox_root(path: str) -> str | None:
    busybox = shutil.which("busybox")
    if busybox is None:
        return None
    os.makedirs(f"{path}/bin")
    shutil.copy(busybox, f"{path}/bin/busybox")
    for name in os.popen(f"{busybox} --list").read().split():
        if name != "busybox":
            os.symlink("busybox", f"{path}/bin/{name}")
    os.makedirs(f"{path}/etc")
    return path


def rootfs_rows(rt: LocalRuntime, reps: int, root: str) -> list[tuple[str, list[float]]]:
    rows = []
    for mode in ("overlay", "copy"):
        os.environ[rootfs.MODE_ENV] = mode

        def cycle() -> None:
            sb = rt.create(SandboxConfig(rootfs=root))
            sb.exec(["true"])
            sb.terminate()

        try:
            cycle()  # warm
            rows.append((f"same, in an image root ({mode})", timed(cycle, reps, rt)))
        finally:
            del os.environ[rootfs.MODE_ENV]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    LocalRuntime.check()
    with tempfile.TemporaryDirectory(prefix="pms-bench-runtime-") as tmp:
        rt = LocalRuntime(tmp)
        rt.create(SandboxConfig()).terminate(wait=True)  # warm caches, imports, the probe

        def cycle() -> None:
            sb = rt.create(SandboxConfig())
            if sb.exec(["true"]).returncode != 0:
                raise RuntimeError("exec true failed")
            sb.terminate()

        def cycle_wait() -> None:
            sb = rt.create(SandboxConfig())
            sb.exec(["true"])
            sb.terminate(wait=True)

        rows: list[tuple[str, list[float]]] = [
            ("create -> exec(true) -> terminate()", timed(cycle, args.reps, rt)),
            ("create -> exec(true) -> terminate(wait=True)", timed(cycle_wait, args.reps, rt)),
        ]
        settle(rt)
        sandboxes = []
        rows.append(
            ("create", timed(lambda: sandboxes.append(rt.create(SandboxConfig())), args.reps))
        )
        it = iter(sandboxes)
        rows.append(("exec(true)", timed(lambda: sandboxes[0].exec(["true"]), args.reps)))
        rows.append(
            ("terminate(wait=True)", timed(lambda: next(it).terminate(wait=True), args.reps))
        )
        rows += tunnel_rows(rt, args.reps, "setns" if os.geteuid() == 0 else "relay")
        if os.geteuid() == 0:
            os.environ[MODE_ENV] = "relay"
            try:
                rows += tunnel_rows(rt, args.reps, "relay")
            finally:
                del os.environ[MODE_ENV]
        root = busybox_root(f"{tmp}/image")
        if root is not None:
            rows[1:1] = rootfs_rows(rt, args.reps, root)
        settle(rt)
        rt.gc(keep_finished=0)

    print(f"local runtime, {args.reps} reps, {os.cpu_count()} cores, uid {os.geteuid()}")
    print(f"{'what':<48} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    for name, samples in rows:
        p50, p90, worst = percentiles(samples)
        print(f"{name:<48} {p50:>8.1f} {p90:>8.1f} {worst:>8.1f}")


if __name__ == "__main__":
    main()
