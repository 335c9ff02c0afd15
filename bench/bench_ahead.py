"""Sandboxes started ahead: a function-scoped sandbox per test against one shared sandbox.

    .venv/bin/python bench/bench_ahead.py [--backend modal|local] [--latency-ms 80]
        [--start-latency-ms 1000] [--ready-delay 0] [--ahead auto 0] [--tests 12]
        [--work 0.3] [--reps 3]

The same suite twice — ``--tests`` tests, each one exec plus ``--work`` seconds of its own —
once with a function-scoped ``sandbox_fixture`` (a sandbox per test) and once with one
session-scoped sandbox, each as an inner ``pytest`` run; it prints the wall time of each
(median of ``--reps``) and their ratio, for each ``--ahead`` value (``--modal-sandbox-ahead``).

``--backend modal`` (the default) runs the inner pytest with ``--modal-sandbox=modal`` against
an emulator started here that charges Modal's costs: ``--latency-ms`` per RPC and
``--start-latency-ms`` before a new sandbox's container is usable (``EmulatorProcess(
start_latency_ms=...)``).  With an emulator that has no ``--start-latency-ms``, run with
``--start-latency-ms 0 --ready-delay 1.0``: every sandbox then gets a daemon that is ready a
second after it starts, which charges the same second per sandbox the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUITE = """
import time

import pytest

from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

READY_DELAY = {ready_delay}
daemons = []
if READY_DELAY:
    daemons = [
        Daemon(
            "container",
            f"sleep {{READY_DELAY}}; exec python3 -m http.server 8000",
            ready=Probe.tcp(8000),
        )
    ]
box = sandbox_fixture(scope="{scope}", daemons=daemons)


@pytest.mark.parametrize("n", range({tests}))
def test_work(box, n):
    assert box.exec("true").returncode == 0
    time.sleep({work})
"""


def run_suite(
    root: Path, scope: str, ahead: str, opts: argparse.Namespace, env: dict[str, str]
) -> float:
    """Wall seconds of one inner pytest run."""
    with tempfile.TemporaryDirectory(prefix=f"pms-bench-ahead-{scope}-", dir=root) as tmp:
        path = Path(tmp)
        (path / "test_suite.py").write_text(
            textwrap.dedent(SUITE).format(
                scope=scope, tests=opts.tests, work=opts.work, ready_delay=opts.ready_delay
            )
        )
        return inner_pytest(path, opts.backend, [f"--modal-sandbox-ahead={ahead}"], env)


def inner_pytest(path: Path, backend: str, extra: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``pytest`` run in ``path`` (images on the host, a state dir there)."""
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--modal-sandbox={backend}",
        "--modal-sandbox-progress=off",
        "--modal-sandbox-local-images=host",
        *extra,
    ]
    run_env = {**env, "PYTEST_MODAL_SANDBOX_STATE_DIR": str(path / "state")}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=path, env=run_env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"inner pytest failed:\n{proc.stdout}\n{proc.stderr}")
    return wall


@contextlib.contextmanager
def bench_environment(
    opts: argparse.Namespace, prefix: str
) -> Iterator[tuple[Path, dict[str, str], str]]:
    """A scratch directory, the inner runs' environment and a line saying where they run: on
    the local backend, or (``opts.backend == "modal"``) against an emulator started here."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        config = root / "modal.toml"  # a developer's ~/.modal.toml stays out of it
        config.touch()
        env = {**os.environ, "PYTEST_ADDOPTS": "", "MODAL_CONFIG_PATH": str(config)}
        emulator = None
        where = "local backend"
        if opts.backend == "modal":
            emulator = start_emulator(opts, root)
            env.update(emulator.client_env())
            where = (
                f"modal backend against an emulator: {opts.latency_ms:g} ms per RPC, "
                f"{opts.start_latency_ms:g} ms container start"
            )
        try:
            yield root, env, where
        finally:
            if emulator is not None:
                emulator.stop()


def start_emulator(opts: argparse.Namespace, root: Path) -> Any:
    from pytest_modal_sandbox.emulator import EmulatorProcess

    kwargs: dict[str, Any] = {}
    if opts.start_latency_ms:
        kwargs["start_latency_ms"] = opts.start_latency_ms
    try:
        emulator = EmulatorProcess(
            token_id="ak-bench",
            token_secret="as-bench",
            latency_ms=opts.latency_ms,
            state_dir=root / "emulator",
            images="host",
            **kwargs,
        )
    except TypeError as exc:
        raise SystemExit(
            f"this emulator has no start latency ({exc}); measure with "
            "--start-latency-ms 0 --ready-delay 1.0 instead"
        ) from None
    return emulator.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="modal", choices=["modal", "local"])
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--start-latency-ms", type=float, default=1000.0)
    parser.add_argument("--ready-delay", type=float, default=0.0)
    parser.add_argument("--ahead", nargs="+", default=["auto", "0"])
    parser.add_argument("--tests", type=int, default=12)
    parser.add_argument("--work", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    with bench_environment(opts, "pms-bench-ahead-") as (root, env, where):
        print(
            f"{where}; {opts.tests} tests of one exec + {opts.work:g} s"
            + (f"; a daemon ready after {opts.ready_delay:g} s" if opts.ready_delay else "")
            + f"; median of {opts.reps}; {os.cpu_count()} cores"
        )
        print(f"{'ahead':>6}  {'function':>9}  {'session':>8}  ratio")
        for ahead in opts.ahead:
            walls: dict[str, float] = {}
            for scope in ("function", "session"):
                samples = [run_suite(root, scope, ahead, opts, env) for _ in range(opts.reps)]
                walls[scope] = statistics.median(samples)
            ratio = walls["function"] / walls["session"]
            print(f"{ahead:>6}  {walls['function']:>8.2f}s  {walls['session']:>7.2f}s  {ratio:.2f}")


if __name__ == "__main__":
    main()
