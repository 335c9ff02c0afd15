"""How the real ``modal`` client, and the plugin on it, fare against Modal's failures.

Measurements against emulators that inject faults (``--fault-rate``), throttle creates
(``--create-rate``) or cap concurrency (``--max-sandboxes``):

* ``calls``: each SDK call a test makes, ``--n`` times, on its own: which calls the client
  retries by itself and which surface to the caller, with which exception and how often;
* ``suite``: the plugin's backend-neutral behaviour suite (``tests/behaviour_suite.py``)
  run with ``--modal-sandbox=modal`` against the emulator, ``--runs`` times (seeds 1, 2, ...):
  its outcomes, and the first line of every failure;
* ``cost``: what faults cost: the behaviour suite's wall time against a clean emulator and
  against one with the given faults, runs alternating, medians side by side;
* ``ended``: how soon a command whose sandbox is ended from outside (terminated, timeout,
  idle timeout, out of memory) raises ``SandboxGone``, through the plugin's modal backend.

    .venv/bin/python bench/bench_chaos.py calls --fault-rate 0.05 --n 200
    .venv/bin/python bench/bench_chaos.py suite --fault-rate 0.05 --create-rate 3 --runs 3
    .venv/bin/python bench/bench_chaos.py cost --fault-rate 0.05 --create-rate 3 --runs 5
    .venv/bin/python bench/bench_chaos.py ended --n 5
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "plugin")]  # the behaviour suite

CONFIG = Path(tempfile.mkdtemp(prefix="bench-chaos-")) / "modal.toml"
CONFIG.touch()
os.environ["MODAL_CONFIG_PATH"] = str(CONFIG)  # before modal is imported
os.environ["MODAL_DISABLE_API_PROXY"] = "1"

import modal  # noqa: E402
from modal_proto import api_pb2  # noqa: E402

from pytest_modal_sandbox.emulator import EmulatorProcess  # noqa: E402


def _emulator(
    args: argparse.Namespace, seed: int, state: Path, *, clean: bool = False
) -> EmulatorProcess:
    if clean:  # Modal on a good day
        return EmulatorProcess(state_dir=state, images="host")
    return EmulatorProcess(
        state_dir=state,
        images="host",
        fault_rate=args.fault_rate,
        create_rate=args.create_rate,
        max_sandboxes=args.max_sandboxes,
        seed=seed,
    )


def _client(url: str) -> Any:
    modal.Client._set_env_client(None)
    client = modal.Client(url, api_pb2.CLIENT_TYPE_CLIENT, ("ak-bench", "as-bench"))
    client.__enter__()
    return client


def _name(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:70] if str(exc) else ""
    return f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}: {text}"


# -- calls --------------------------------------------------------------------------------------


def calls(args: argparse.Namespace) -> None:
    """Each SDK call ``--n`` times against one faulty emulator; what surfaces, per call."""
    with tempfile.TemporaryDirectory() as tmp, _emulator(args, args.seed, Path(tmp)) as emu:
        client = _client(emu.url)
        app = _persist(lambda: modal.App.lookup("bench", create_if_missing=True, client=client))
        base = _persist(
            lambda: modal.Sandbox.create(
                "sh",
                "-c",
                "echo entry; exec python3 -m http.server 8000",
                app=app,
                client=client,
                encrypted_ports=[8000],
                readiness_probe=modal.Probe.with_tcp(8000, interval_ms=50),
                timeout=3600,  # outlives every case, however slow the retries
            )
        )
        vol = modal.Volume.from_name("bench", create_if_missing=True, client=client)
        _persist(vol.hydrate)

        def fresh() -> Any:
            return modal.Sandbox.from_id(base.object_id, client=client)

        def create_terminate() -> None:
            sb = modal.Sandbox.create(app=app, client=client)
            try:
                sb.terminate()
            finally:
                _persist(sb.terminate)

        def exec_read_wait() -> None:
            p = base.exec("sh", "-c", "seq 1 20000")
            assert len(p.stdout.read()) == 108894, "output lost"
            assert p.wait() == 0

        def exec_stdin() -> None:
            p = base.exec("cat")
            p.stdin.write(b"x" * 1000)
            p.stdin.write_eof()
            p.stdin.drain()
            assert p.stdout.read() == "x" * 1000
            p.wait()

        def fs_roundtrip() -> None:
            base.filesystem.write_text("hello", "/tmp/bench.txt")
            assert base.filesystem.read_text("/tmp/bench.txt") == "hello"

        def volume_roundtrip() -> None:
            with vol.batch_upload(force=True) as batch:
                batch.put_file(io.BytesIO(b"v"), "/v.txt")
            assert b"".join(vol.read_file("v.txt")) == b"v"

        cases: list[tuple[str, Callable[[], object]]] = [
            ("Sandbox.create + terminate", create_terminate),
            ("exec + stdout.read + wait", exec_read_wait),
            ("exec + stdin + read", exec_stdin),
            ("poll", base.poll),
            ("wait_until_ready", lambda: base.wait_until_ready(timeout=30)),
            ("tunnels (fresh handle)", lambda: fresh().tunnels()),
            ("Sandbox.from_id", fresh),
            ("Sandbox.list", lambda: list(modal.Sandbox.list(app_id=app.app_id, client=client))),
            ("set_tags + get_tags", lambda: base.set_tags({"k": "v"}) or base.get_tags()),
            ("filesystem write + read", fs_roundtrip),
            ("Volume upload + read", volume_roundtrip),
        ]
        print(
            f"fault rate {args.fault_rate}, create rate {args.create_rate or '-'}, "
            f"max sandboxes {args.max_sandboxes or '-'}, seed {args.seed}, n={args.n}\n"
        )
        print("| call | ok | surfaced (count: exception) | p50 s | max s |")
        print("|---|---|---|---|---|")
        for label, fn in cases:
            errors: collections.Counter[str] = collections.Counter()
            times = []
            for _ in range(args.n):
                t0 = time.perf_counter()
                try:
                    fn()
                except Exception as exc:  # what the caller sees
                    errors[_name(exc)] += 1
                times.append(time.perf_counter() - t0)
            ok = args.n - sum(errors.values())
            what = "; ".join(f"{n}: {e}" for e, n in errors.most_common()) or "-"
            p50, worst = sorted(times)[len(times) // 2], max(times)
            print(f"| {label} | {ok}/{args.n} | {what} | {p50:.3f} | {worst:.2f} |")
        stats = emu.stats()
        _persist(base.terminate)
        client.__exit__(None, None, None)
    chaos = stats["chaos"]
    print(f"\ninjected: {chaos.get('faults', {})}")
    print(f"refused: {chaos.get('refused', {})}; deduplicated: {chaos.get('deduplicated', {})}")


def _persist(fn: Callable[[], Any], attempts: int = 10) -> Any:
    for _ in range(attempts - 1):
        try:
            return fn()
        except Exception:
            time.sleep(0.2)
    return fn()


# -- suite --------------------------------------------------------------------------------------


def _suite_run(
    args: argparse.Namespace, seed: int, *, clean: bool = False
) -> tuple[str, float, dict[str, Any]]:
    """One run of the behaviour suite against a fresh emulator: its output, wall time, stats."""
    try:  # tests/behaviour_suite.py where the suite is a shared helper, else its test module
        from behaviour_suite import SUITE
    except ImportError:
        from test_behaviour import SUITE

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        project = tmp_path / "project"
        project.mkdir()
        (project / "test_suite.py").write_text(SUITE)
        (project / "pytest.ini").write_text(
            "[pytest]\naddopts = -p no:cacheprovider\nmodal_sandbox_local_images = host\n"
        )
        workers = ["-n", str(args.workers)] if args.workers else ["-p", "no:xdist"]
        with _emulator(args, seed, tmp_path / "emulator", clean=clean) as emu:
            env = {
                **os.environ,
                **emu.client_env(),
                "PYTEST_MODAL_SANDBOX_STATE_DIR": str(tmp_path / "state"),
                "COLUMNS": "400",  # whole failure lines in the short summary
            }
            t0 = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "--modal-sandbox=modal", "-rfE", "-q", *workers],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            ).stdout
            took = time.monotonic() - t0
            stats = emu.stats()
    return out, took, stats


def _summary(out: str) -> str:
    return out.strip().splitlines()[-1] if out.strip() else "(no output)"


def suite(args: argparse.Namespace) -> None:
    """The behaviour suite on the modal backend, ``--runs`` times against faulty emulators."""
    totals: collections.Counter[str] = collections.Counter()
    failures: collections.Counter[str] = collections.Counter()
    for run in range(1, args.runs + 1):
        out, took, stats = _suite_run(args, run)
        summary = _summary(out)
        outcome = dict(
            (k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|errors?)", summary)
        )
        totals.update(outcome)
        for line in out.splitlines():
            if line.startswith(("FAILED ", "ERROR ")):
                test, _, why = line.partition(" - ")
                failures[f"{test.split('::')[-1]}: {why[:160]}"] += 1
        chaos = stats["chaos"]
        faults = sum(chaos.get("faults", {}).values())
        rpcs = sum(sum(v.values()) for v in stats["rpcs"].values())
        print(
            f"run {run} (seed {run}): {summary}  [{took:.0f} s; {rpcs} RPCs, {faults} faults, "
            f"refused {chaos.get('refused', {})}, deduplicated {chaos.get('deduplicated', {})}]"
        )
    print(f"\ntotal over {args.runs} runs: {dict(totals)}")
    for what, n in failures.most_common():
        print(f"  {n}x {what}")


def cost(args: argparse.Namespace) -> None:
    """The suite's wall time without faults and with them, alternating runs; medians."""
    times: dict[str, list[float]] = {"clean": [], "faults": []}
    injected: list[int] = []
    for run in range(1, args.runs + 1):
        for kind in ("clean", "faults"):
            out, took, stats = _suite_run(args, run, clean=kind == "clean")
            if " passed" not in _summary(out) or re.search(r"failed|error", _summary(out)):
                print(f"run {run} ({kind}) did not pass: {_summary(out)}\n{out[-3000:]}")
            times[kind].append(took)
            if kind == "faults":
                injected.append(sum(stats["chaos"].get("faults", {}).values()))
            print(f"run {run} {kind:6}: {took:5.1f} s  {_summary(out)}")
    clean, faulty = statistics.median(times["clean"]), statistics.median(times["faults"])
    label = f"--fault-rate {args.fault_rate:g} --create-rate {args.create_rate:g}" + (
        f" --max-sandboxes {args.max_sandboxes}" if args.max_sandboxes else ""
    )
    workers = f"-n {args.workers}" if args.workers else "no xdist"
    print(
        f"\nbehaviour suite on the modal backend against the emulator ({workers}), "
        f"median of {args.runs}:"
    )
    print("| emulator | wall time | ratio |")
    print("|---|---|---|")
    print(f"| clean | {clean:.1f} s | 1.00 |")
    print(
        f"| {label} (median {statistics.median(injected):.0f} faults) | {faulty:.1f} s "
        f"| {faulty / clean:.2f} |"
    )


def ended(args: argparse.Namespace) -> None:
    """From the moment a sandbox is ended from outside until the command running in it raises
    ``SandboxGone`` (the plugin's modal backend against the emulator)."""
    from pytest_modal_sandbox import SandboxGone, start
    from pytest_modal_sandbox.backends import make_backend

    took: dict[str, list[float]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, _emulator(args, 1, Path(tmp), clean=True) as emu:
        backend = make_backend("emulator", server_url=emu.url)
        try:
            for _ in range(args.n):
                for how in ("terminated", "timeout", "idle_timeout", "oom"):
                    with start(backend=backend) as sb:
                        at: list[float] = []

                        def end(
                            sandbox_id: str = sb.id, how: str = how, at: list[float] = at
                        ) -> None:
                            time.sleep(1.5)  # the command runs, and is being watched
                            at.append(time.monotonic())
                            emu.end_sandbox(sandbox_id, how)

                        thread = threading.Thread(target=end)
                        thread.start()
                        try:
                            sb.exec("sleep", "300", timeout=120)
                        except SandboxGone as exc:
                            took[how].append(time.monotonic() - at[0])
                            assert exc.how in (how, "idle_timeout"), exc
                        thread.join()
        finally:
            backend.close()
    print(f"from the end (emulator's EndSandbox sent) to SandboxGone, n={args.n}:")
    print("| ending | p50 | max |")
    print("|---|---|---|")
    for how, values in took.items():
        print(f"| {how} | {statistics.median(values):.3f} s | {max(values):.3f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("calls", "suite", "cost", "ended"))
    p.add_argument("--fault-rate", type=float, default=0.05)
    p.add_argument("--create-rate", type=float, default=0.0)
    p.add_argument("--max-sandboxes", type=int, default=0)
    p.add_argument("--seed", type=int, default=1, help="calls: the emulator's seed")
    p.add_argument("--n", type=int, default=100, help="calls: repetitions of each call")
    p.add_argument("--runs", type=int, default=3, help="suite, cost: runs (seeds 1..runs)")
    p.add_argument("--workers", type=int, default=0, help="suite, cost: xdist workers (-n)")
    args = p.parse_args()
    {"calls": calls, "suite": suite, "cost": cost, "ended": ended}[args.what](args)


if __name__ == "__main__":
    main()
