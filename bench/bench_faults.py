"""Time from each injected fault until the backend no longer lists the sandbox.

Runs the fault scenarios of ``tests/faults`` (the same code the fault tests use) ``--n`` times
on each offline backend and prints a Markdown table of the medians: fault, the layer that
ended the sandbox, and the time.  "Gone" is asked of the backend itself: the local runtime's
records, or ``modal.Sandbox.list`` against an emulator (the modal backend pointed at it).

    .venv/bin/python bench/bench_faults.py --n 3            # both backends
    .venv/bin/python bench/bench_faults.py --backend local --only sigkill
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # faultlib, helpers

import faultlib

Scenario = Callable[[faultlib.World], faultlib.Outcome]


def _signal(where: str, sig: int, workers: int = 0, **kw: Any) -> Scenario:
    return lambda w: faultlib.signal_fault(w, where, sig, workers=workers, **kw)


# (key, fault, scenario, layer on local, layer on the Modal path)
SCENARIOS: list[tuple[str, str, Scenario, str, str]] = [
    (
        "worker-kill-test",
        "xdist worker SIGKILLed during a test (`-n 2`)",
        faultlib.worker_killed_in_test,
        "6: keeper's tie to the worker (pipe EOF), racing 2: controller's testnodedown",
        "2: controller, `pytest_testnodedown`",
    ),
    (
        "worker-kill-shared",
        'worker SIGKILLed right after creating the `share="run"` sandbox',
        faultlib.worker_killed_in_shared_setup,
        "share claim: the next claimant ends the unready one",
        "share claim: the next claimant ends the unready one",
    ),
    (
        "ctrl-c-setup",
        "Ctrl-C during setup (readiness wait)",
        _signal("setup", signal.SIGINT),
        "1: launch cleanup",
        "1: launch cleanup",
    ),
    (
        "ctrl-c-call",
        "Ctrl-C during the test",
        _signal("call", signal.SIGINT),
        "1: fixture finalizer (pytest tears fixtures down on Ctrl-C)",
        "1: fixture finalizer (pytest tears fixtures down on Ctrl-C)",
    ),
    (
        "ctrl-c-call-xdist",
        "Ctrl-C during the test, `-n 2` (test's + shared sandbox)",
        _signal("call", signal.SIGINT, workers=2, test="test_shared_call"),
        "1 (worker finalizer) + 3 (shared: sweep)",
        "1 (worker finalizer) + 3 (shared: sweep)",
    ),
    (
        "ctrl-c-teardown",
        "Ctrl-C during teardown (in a user fixture's finalizer)",
        _signal("teardown", signal.SIGINT),
        "3: end-of-run sweep (the sandbox's finalizer is skipped)",
        "3: end-of-run sweep (the sandbox's finalizer is skipped)",
    ),
    (
        "sigterm-call",
        "SIGTERM to the process group during the test",
        _signal("call", signal.SIGTERM),
        "4: SIGTERM as Ctrl-C, then 1",
        "4: SIGTERM as Ctrl-C, then 1",
    ),
    (
        "sigterm-xdist",
        "SIGTERM to the process group, `-n 2`",
        _signal("call", signal.SIGTERM, workers=2),
        "4, then 1 (worker finalizer)",
        "4, then 1 (worker finalizer)",
    ),
    (
        "sigkill-all",
        "SIGKILL of every pytest process (test's + shared sandbox)",
        _signal("call", signal.SIGKILL, test="test_shared_call", ini=faultlib.DEADMAN_INI),
        "6: keeper tie (pipe EOF; shared: run-lock poll, 0.5 s)",
        "6: heartbeat lease 1 s + idle_timeout 2 s (defaults 60 + 60)",
    ),
    (
        "sigkill-all-xdist",
        "SIGKILL of every pytest process, `-n 2`",
        _signal(
            "call", signal.SIGKILL, workers=2, test="test_shared_call", ini=faultlib.DEADMAN_INI
        ),
        "6: keeper tie (as above)",
        "6: lease + idle_timeout (as above)",
    ),
    (
        "hook-raises",
        "`pytest_modal_sandbox_created` hook raises right after create",
        lambda w: faultlib.start_failure(w, "test_plain", env={"FAULT_ON_CREATED": "raise"}),
        "1: launch cleanup",
        "1: launch cleanup",
    ),
    (
        "readiness-timeout",
        "readiness probe (tcp, 1 s) times out (from create, incl. the wait)",
        lambda w: faultlib.start_failure(w, "test_never_ready"),
        "1: launch cleanup",
        "1: launch cleanup",
    ),
    (
        "daemon-crash",
        "daemon exits before it is ready (from create)",
        lambda w: faultlib.start_failure(w, "test_daemon_crashes"),
        "1: launch cleanup",
        "1: launch cleanup",
    ),
    (
        "stale-run",
        "controller SIGKILLed; the next run starts (from its start)",
        faultlib.stale_run_swept_by_next,
        "6 first (keeper tie); 5 forgets the run",
        "5: next run's start-of-run sweep",
    ),
]


@contextlib.contextmanager
def make_world(backend: str, root: Path) -> Iterator[faultlib.World]:
    if backend == "local":
        yield faultlib.local_world(root)
    else:
        with faultlib.emulator_world(root) as world:
            yield world


def measure(backend: str, scenario: Scenario, n: int) -> list[float]:
    times = []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="pms-bench-faults-") as tmp:
            root = Path(tmp) / f"{i}"
            root.mkdir()
            os.environ["PYTEST_MODAL_SANDBOX_STATE_DIR"] = str(root / "state")
            with make_world(backend, root) as world:
                try:
                    out = scenario(world)
                    times.append(out.gone_after)
                    if os.environ.get("BENCH_FAULTS_VERBOSE"):
                        marks = ("end of run", "crashed:", "stale run")
                        said = [ln for ln in out.output.splitlines() if any(m in ln for m in marks)]
                        caught = [ln for ln in said if any(i in ln for i in out.ids)]
                        print(f"  {backend}: {out.gone_after:.3f}s {caught}", file=sys.stderr)
                finally:
                    leaked = faultlib.clean_up(world)
                    if leaked:
                        print(f"  warning: {backend}: had to end {leaked}", file=sys.stderr)
    return times


def emulator_owner_row(n: int) -> list[float]:
    times = []
    for i in range(n):
        with tempfile.TemporaryDirectory(prefix="pms-bench-faults-") as tmp:
            root = Path(tmp) / f"{i}"
            root.mkdir()
            os.environ["PYTEST_MODAL_SANDBOX_STATE_DIR"] = str(root / "state")
            world = faultlib.local_world(root)
            try:
                times.append(faultlib.own_emulator_killed(world).gone_after)
            finally:
                faultlib.clean_up(world)
    return times


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s" if times else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3, help="runs per fault and backend")
    parser.add_argument("--backend", choices=["local", "emulator", "both"], default="both")
    parser.add_argument("--only", default="", help="only faults whose key contains this")
    args = parser.parse_args()
    backends = ["local", "emulator"] if args.backend == "both" else [args.backend]
    print(f"median of {args.n} runs; time from the fault until the backend no longer lists it\n")
    print("| fault | local: layer | local | Modal path (emulator): layer | Modal path |")
    print("|---|---|---|---|---|")
    for key, fault, scenario, layer_local, layer_modal in SCENARIOS:
        if args.only not in key:
            continue
        got = {b: measure(b, scenario, args.n) for b in backends}
        print(
            f"| {fault} | {layer_local} | {fmt(got.get('local', []))} | {layer_modal} "
            f"| {fmt(got.get('emulator', []))} |",
            flush=True,
        )
    if args.only in "own-emulator" and "emulator" in backends:
        print(
            "| SIGKILL of every pytest process, `--modal-sandbox=emulator` (the run's own "
            "emulator; until no emulator/sandbox process) | - | - | the plugin's watchdog ends "
            f"the emulator, which ends its sandboxes | {fmt(emulator_owner_row(args.n))} |"
        )


if __name__ == "__main__":
    main()
