"""Plugin-level benchmarks: the budgets of DESIGN §7, measured through the public API.

    .venv/bin/python bench/bench_plugin.py [--reps N]

* start-up: ``pytest --co -q`` on an empty suite with the plugin installed but inactive, vs
  with it disabled (``-p no:modal_sandbox``); median wall time of N runs, and the plugin's
  own import time from ``-X importtime``;
* local, function-scoped sandbox, no daemon: ``start()`` → ``exec("true")`` → terminate;
* local, one Python HTTP daemon: ``start()`` until its http probe passes → terminate;
* the same two on the emulator (the Modal code path), plus the control-plane and router RPCs
  each lifecycle costs (counted by the emulator), and at 80 ms added latency per RPC.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_modal_sandbox import Daemon, Probe, SandboxSpec, start
from pytest_modal_sandbox.backends import make_backend

HTTP = SandboxSpec(
    daemons=[Daemon("web", "exec python3 -m http.server 8000", ready=Probe.http(8000))],
    encrypted_ports=[8000],
)
TCP = SandboxSpec(
    daemons=[Daemon("web", "exec python3 -m http.server 8000", ready=Probe.tcp(8000))],
    encrypted_ports=[8000],
)
BARE = SandboxSpec()


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"p50 {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   (n={len(ms)})"


def startup(reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_empty.py").write_text("def test_x():\n    pass\n")
        base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]

        def run(*extra: str) -> None:
            subprocess.run([*base, *extra], cwd=tmp, capture_output=True, check=True)

        on = timed(lambda: run(), reps)
        off = timed(lambda: run("-p", "no:modal_sandbox"), reps)
        imp = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-c",
                # what pytest has imported anyway before it loads plugins
                "import pytest, xdist, filelock; import pytest_modal_sandbox.plugin",
            ],
            capture_output=True,
            text=True,
        ).stderr
        own = 0
        for line in imp.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s+(\S.*)", line)
            if m and m.group(3).strip() == "pytest_modal_sandbox.plugin":
                own = int(m.group(2))
    print(f"pytest start-up, plugin inactive : {fmt(on)}")
    print(f"pytest start-up, plugin disabled : {fmt(off)}")
    delta = (statistics.median(on) - statistics.median(off)) * 1000
    print(f"  difference of medians          : {delta:+.1f} ms")
    print(f"  import of the plugin module     : {own / 1000:.1f} ms cumulative (-X importtime)")


def lifecycles(backend_name: str, reps: int, **options: object) -> None:
    backend = make_backend(backend_name, **options)
    try:

        def bare() -> None:
            with start(BARE, backend=backend) as sb:
                sb.exec("true")

        def http() -> None:
            with start(HTTP, backend=backend):
                pass

        bare()  # warm-up: images, app lookup, first connections
        print(f"{backend_name:8} no daemon, create → exec → terminate : {fmt(timed(bare, reps))}")
        print(f"{backend_name:8} http daemon, create → ready → terminate: {fmt(timed(http, reps))}")
    finally:
        backend.close()


def rpc_counts(reps: int) -> None:
    from pytest_modal_sandbox.emulator import EmulatorProcess

    for latency in (0, 80):
        with EmulatorProcess(latency_ms=latency) as emu:
            options = {"server_url": emu.url}
            backend = make_backend("emulator", **options)
            try:
                with start(BARE, backend=backend) as sb:  # warm-up (app, image, token)
                    sb.exec("true")
                for name, spec, body in (
                    ("no daemon + 1 exec", BARE, lambda sb: sb.exec("true")),
                    ("http daemon", HTTP, lambda sb: None),
                    ("tcp-probed daemon", TCP, lambda sb: None),
                ):
                    emu.reset_stats()
                    samples = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        with start(spec, backend=backend) as sb:
                            body(sb)
                        samples.append(time.perf_counter() - t0)
                    time.sleep(0.2)
                    stats = emu.stats()["rpcs"]
                    per = {
                        plane: {k: v / reps for k, v in sorted(stats[plane].items()) if v}
                        for plane in ("control", "router")
                    }
                    total = sum(sum(d.values()) for d in per.values())
                    print(
                        f"emulator {latency:>2} ms/RPC, {name:18}: {fmt(samples)}; "
                        f"{total:.1f} RPCs per lifecycle"
                    )
                    for plane, counts in per.items():
                        shown = ", ".join(f"{k} {v:g}" for k, v in counts.items())
                        print(f"    {plane:7}: {shown}")
            finally:
                backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("PYTEST_MODAL_SANDBOX_STATE_DIR", tempfile.mkdtemp(prefix="pms-bench-"))
    startup(max(5, args.reps // 2))
    lifecycles("local", args.reps)
    rpc_counts(max(5, args.reps // 2))


if __name__ == "__main__":
    main()
