"""Concurrent start: N session-scoped sandboxes ready in about the time of one.

    .venv/bin/python bench/bench_session_starts.py [--backend local|emulator] [--counts 1,2,4,8]
                                             [--delay 1.0] [--reps 3]

For each N, an inner pytest run (a subprocess, private state dir) has N session-scoped
``sandbox_fixture``s, each with one daemon that takes ``--delay`` seconds to start and then
serves HTTP (``sleep D; exec python3 -m http.server``, TCP probe), and one test that uses all
of them.  Measured, median of ``--reps`` runs, started ahead (``--modal-sandbox-ahead``, the
default) and not (``--modal-sandbox-ahead=0``):

* ready: from the end of collection to the first line of the test (every sandbox ready);
* wall: the whole pytest command (start-up, emulator, teardown and sweep included).

Started ahead, the N sandboxes start in threads right after collection, so "ready" stays near
one sandbox's time; without it the fixtures start one after another (N times one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CONFTEST = """
import time

def pytest_collection_finish(session):
    session.config._bench_t0 = time.time()
"""


def suite(n: int, delay: float) -> str:
    fixtures = "\n".join(
        f"box{i} = sandbox_fixture(scope='session', daemons=[web], encrypted_ports=[8000])"
        for i in range(n)
    )
    args = ", ".join(f"box{i}" for i in range(n))
    return textwrap.dedent(
        f"""
        import os, time
        from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

        web = Daemon("web", "sleep {delay}; exec python3 -m http.server 8000",
                     ready=Probe.tcp(8000, timeout=120))
        {{fixtures}}

        def test_all(request, {args}):
            ready = time.time() - request.config._bench_t0
            with open(os.environ["BENCH_OUT"], "w") as f:
                f.write(str(ready))
        """
    ).replace("{fixtures}", fixtures)


def run_once(backend: str, n: int, delay: float, ahead: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="pms-bench-session-starts-") as tmp:
        root = Path(tmp)
        (root / "conftest.py").write_text(CONFTEST)
        (root / "test_bench.py").write_text(suite(n, delay))
        out = root / "ready.txt"
        env = dict(
            os.environ,
            PYTEST_MODAL_SANDBOX_STATE_DIR=str(root / "state"),
            BENCH_OUT=str(out),
        )
        args = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--modal-sandbox={backend}",
            f"--modal-sandbox-ahead={'auto' if ahead else '0'}",
            "--modal-sandbox-progress=off",
        ]
        start = time.perf_counter()
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"inner pytest failed:\n{proc.stdout}\n{proc.stderr}")
        return float(out.read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="local", choices=["local", "emulator"])
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]
    print(
        f"backend {opts.backend}, daemon start {opts.delay:g}s, median of {opts.reps} runs; "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'N':>3}  {'ready (on)':>10}  {'ready (off)':>11}  {'wall (on)':>9}  {'wall (off)':>10}"
    )
    base = None
    for n in counts:
        row = {}
        for ahead in (True, False):
            samples = [run_once(opts.backend, n, opts.delay, ahead) for _ in range(opts.reps)]
            row[ahead] = (
                statistics.median(s[0] for s in samples),
                statistics.median(s[1] for s in samples),
            )
        if base is None:
            base = row[True][0]
        print(
            f"{n:>3}  {row[True][0]:>9.2f}s  {row[False][0]:>10.2f}s  "
            f"{row[True][1]:>8.2f}s  {row[False][1]:>9.2f}s   "
            f"(on: {row[True][0] / base:.2f}x the time of N={counts[0]})"
        )


if __name__ == "__main__":
    main()
