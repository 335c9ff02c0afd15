"""Benchmark: what a function-scoped sandbox costs on the Modal path, counted on the emulator.

For each added per-RPC latency (0 ms, and 80 ms = a cloud round trip), and each container
start latency (``--start-latency-ms``, default 0; 1000 is Modal's cold start), it runs N lifecycles
of ``Sandbox.create -> exec("true").wait() -> terminate()`` with the real ``modal`` client
against ``python -m pytest_modal_sandbox.emulator`` (App.lookup and the image once, before),
and reports the RPCs per lifecycle (control plane and task command router, as counted by the
emulator) and p50/p90 wall time; then the same lifecycle on ``runtime.LocalRuntime`` directly.

    .venv/bin/python bench/bench_emulator.py [--n 20] [--latency-ms 0 80]
        [--start-latency-ms 0 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

_CONFIG = Path(tempfile.mkdtemp(prefix="modal-config-")) / "modal.toml"
_CONFIG.touch()
os.environ["MODAL_CONFIG_PATH"] = str(_CONFIG)
os.environ["MODAL_DISABLE_API_PROXY"] = "1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def flat(stats: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for service, methods in stats["rpcs"].items():
        for method, n in methods.items():
            out[f"{service}:{method}"] += n
    return out


def bench_emulator(
    n: int, latency_ms: float, read_output: bool, start_latency_ms: float = 0.0
) -> dict[str, Any]:
    import modal
    import modal._environments
    from modal_proto import api_pb2

    from pytest_modal_sandbox.emulator import EmulatorProcess

    with (
        tempfile.TemporaryDirectory() as state,
        EmulatorProcess(
            state_dir=state, latency_ms=latency_ms, start_latency_ms=start_latency_ms
        ) as emu,
    ):
        modal.Client._set_env_client(None)
        modal._environments.ENVIRONMENT_CACHE.clear()
        with modal.Client(emu.url, api_pb2.CLIENT_TYPE_CLIENT, ("ak-b", "as-b")) as client:
            t0 = time.perf_counter()
            app = modal.App.lookup("bench", create_if_missing=True, client=client)
            image = modal.Image.debian_slim()
            modal.Sandbox.create(app=app, image=image, client=client).terminate()
            setup_s = time.perf_counter() - t0
            setup_rpcs = flat(emu.stats())
            emu.reset_stats()
            times = []
            for _ in range(n):
                t = time.perf_counter()
                sb = modal.Sandbox.create(app=app, image=image, client=client)
                p = sb.exec("true")
                if read_output:
                    p.stdout.read()
                p.wait()
                sb.terminate()
                times.append(time.perf_counter() - t)
            stats = emu.stats()
            per = {k: v / n for k, v in flat(stats).items()}
            server_ms = {
                f"{svc}:{method}": 1000 * secs / n
                for svc, methods in stats["seconds"].items()
                for method, secs in methods.items()
            }
    return {
        "times": times,
        "per_lifecycle": per,
        "server_ms": server_ms,
        "setup_rpcs": setup_rpcs,
        "setup_s": setup_s,
    }


def bench_runtime(n: int) -> list[float]:
    from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig

    times = []
    with tempfile.TemporaryDirectory() as state:
        rt = LocalRuntime(state)
        for _ in range(n):
            t = time.perf_counter()
            sb = rt.create(SandboxConfig())
            sb.exec(["true"])
            sb.terminate()
            times.append(time.perf_counter() - t)
        for sb in rt.list():
            sb.terminate(wait=True)
        rt.close()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="lifecycles per row (default 20)")
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 80.0])
    p.add_argument("--start-latency-ms", type=float, nargs="+", default=[0.0])
    args = p.parse_args(argv)

    rows = []
    counts: dict[str, dict[str, float]] = {}
    server: dict[str, dict[str, float]] = {}
    setup: Counter[str] = Counter()
    for start in args.start_latency_ms:
        for latency in args.latency_ms:
            for read in (False, True):
                label = f"emulator {latency:g} ms/RPC" + (", + stdout.read()" if read else "")
                if start:
                    label += f", start {start:g} ms"
                r = bench_emulator(args.n, latency, read, start)
                rows.append((label, r["times"], sum(r["per_lifecycle"].values())))
                counts[label] = r["per_lifecycle"]
                server[label] = r["server_ms"]
                setup = r["setup_rpcs"]
    rt_times = bench_runtime(args.n)
    rows.append(("runtime directly (no RPC)", rt_times, 0.0))

    print(f"\nfunction-scoped lifecycle: create -> exec('true') -> terminate, n={args.n}")
    print(f"{'path':<44} {'p50 ms':>8} {'p90 ms':>8} {'RPCs':>6}")
    for label, times, rpcs in rows:
        p50, p90 = pct(times, 0.5) * 1000, pct(times, 0.9) * 1000
        print(f"{label:<44} {p50:>8.1f} {p90:>8.1f} {rpcs:>6.1f}")
    print("\nRPCs per lifecycle (service:method count, mean ms spent in the emulator):")
    for label, per in counts.items():
        detail = ", ".join(
            f"{k} {v:g} ({server[label].get(k, 0.0):.1f} ms)" for k, v in sorted(per.items())
        )
        print(f"  {label}: {detail}")
    print("\none-time RPCs before the first sandbox (App.lookup, image, auth token):")
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(setup.items())))
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
