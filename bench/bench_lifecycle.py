"""Lifecycle and weight of a local sandbox, side by side with bare bubblewrap in the same run.

    .venv/bin/python bench/bench_lifecycle.py [--reps N] [--alive N] [--settle S]

* lifecycle p50: create -> exec("true") -> terminate(wait=True), default spec (egress on),
  with block_network=True (no network stack), and bare ``bwrap --unshare-all ... true`` (one
  process, no keeper, no exec), taken in turn in each round: the ratio is ours / bare.  For
  reference, in the same rounds: bare bwrap doing what a lifecycle does (``sleep`` as the
  entrypoint, ``nsenter ... true`` once it runs, then killed) and, if installed, ``podman run
  --rm`` of a busybox image (imported from /bin/busybox: no registry needed).  Each of our
  sandboxes is of the shape of the one before it, so it is started ahead (``runtime/warm.py``)
  while the other cases run, as in a suite whose tests use the same spec;
* memory with ``--alive`` sandboxes running (default 100): the host processes each sandbox
  adds (keeper, bwrap, the entrypoint's ``sleep``, slirp4netns) and the keeper server they
  were forked from with its spare keepers and the sandbox each started ahead
  (``runtime/spare.py``, ``runtime/warm.py``), as PSS (shared pages split between their users)
  and RSS, summed and divided by the number of sandboxes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import DEVNULL

from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig


def interleaved_p50(
    cases: dict[str, Callable[[], object]], reps: int, settle: float
) -> dict[str, float]:
    """Median ms of each case, run in turn in every round: the machine's load (shared with
    other work) weighs on all of them alike.  Each run starts ``settle`` seconds after the
    one before, so no case is timed while the one before still works in the background (our
    keeper server starting the next sandbox ahead), as tests leave time between sandboxes."""
    for fn in cases.values():
        fn()  # warm
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


BARE = ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc"]
BARE += ["--dev", "/dev"]


def bare_bwrap() -> None:
    subprocess.run([shutil.which("bwrap") or "bwrap", *BARE, "true"], check=True)


def bare_bwrap_lifecycle() -> None:
    """Ours without the rest (keeper, walls, network, records): bwrap runs ``sleep`` as the
    entrypoint, ``nsenter`` runs ``true`` in it once it runs, then bwrap is killed."""
    read, write = os.pipe()
    argv = [shutil.which("bwrap") or "bwrap", *BARE, "--info-fd", str(write), "sleep", "60"]
    proc = subprocess.Popen(argv, pass_fds=[write])
    os.close(write)
    with os.fdopen(read, "rb") as info:
        pid = json.loads(info.read())["child-pid"]
    while not Path(f"/proc/{pid}/task/{pid}/children").read_text().strip():
        time.sleep(0.0002)  # PID 1 forks the entrypoint once the sandbox is set up
    subprocess.run([shutil.which("nsenter") or "nsenter", "-t", str(pid), "-a", "true"], check=True)
    proc.kill()
    proc.wait()


def podman_run(tmp: str) -> Callable[[], None] | None:
    """``podman run --rm --network=none <busybox> true``, the image imported from a busybox
    root (no registry needed); None without podman or busybox."""
    podman, busybox = shutil.which("podman"), shutil.which("busybox")
    if podman is None or busybox is None:
        return None
    root = os.path.join(tmp, "busybox-root")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    for name in ("sh", "true"):
        os.symlink("busybox", os.path.join(root, "bin", name))
    archive = os.path.join(tmp, "busybox.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    subprocess.run([podman, "import", "-q", archive, PODMAN_IMAGE], check=True, stdout=DEVNULL)
    # runc where installed (crun refuses this VM's hybrid cgroups); limits below podman's
    # defaults, which a root without CAP_SYS_RESOURCE (a container's) cannot raise to
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    argv = [podman, *runtime, "run", "--rm", "--network=none"]
    argv += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", PODMAN_IMAGE, "true"]
    return lambda: subprocess.run(argv, check=True, stdout=DEVNULL)


PODMAN_IMAGE = "localhost/pms-bench-busybox"


def descendants(pids: set[int]) -> set[int]:
    """``pids`` and every process below them."""
    parents: dict[int, int] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        parents[int(name)] = int(raw[raw.rindex(b")") + 2 :].split()[1])
    found = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--alive", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.05, help="seconds between runs")
    args = parser.parse_args()
    LocalRuntime.check()
    with tempfile.TemporaryDirectory(prefix="pms-bench-lifecycle-") as tmp:
        rt = LocalRuntime(tmp)

        def cycle(config: SandboxConfig) -> Callable[[], None]:
            def run() -> None:
                sb = rt.create(config)
                if sb.exec(["true"]).returncode != 0:
                    raise RuntimeError("exec true failed")
                sb.terminate(wait=True)

            return run

        cases = {"ours: default spec": cycle(SandboxConfig())}
        if "block_network" in SandboxConfig.__dataclass_fields__:  # (absent before egress)
            cases["ours: block_network=True"] = cycle(SandboxConfig(block_network=True))
        cases["bare bwrap: sleep, nsenter true, kill"] = bare_bwrap_lifecycle
        podman = podman_run(tmp)
        if podman is not None:
            cases["podman run --rm (busybox) true"] = podman
        cases["bare bwrap --unshare-all true"] = bare_bwrap
        try:
            rows = list(interleaved_p50(cases, args.reps, args.settle).items())
        finally:
            if podman is not None:
                subprocess.run(["podman", "rmi", "-f", PODMAN_IMAGE], stdout=DEVNULL, check=False)
        alive = [rt.create(SandboxConfig()) for _ in range(args.alive)]
        keepers = {sb._keeper.pid for sb in alive}
        servers = {parent_of(pid) for pid in keepers} - {os.getpid(), 1, 0}
        # the keeper server, once per creating process, and its spare keepers with the rest
        pids = descendants(keepers | servers)
        totals = [memory_kib(pid) for pid in pids]
        pss = sum(t[0] for t in totals) / max(1, len(alive)) / 1024
        rss = sum(t[1] for t in totals) / max(1, len(alive)) / 1024
        started_ahead = sum(bool(sb._meta.get("started_ahead")) for sb in alive)
        for sb in alive:
            sb.terminate()
        for sb in alive:
            sb.wait(60)
        rt.close()

    bare = rows[-1][1]
    if podman is None:
        print("(podman: not installed, or no busybox to make its image from)")
    print(
        f"lifecycle create -> exec(true) -> terminate(wait=True), p50 of {args.reps}, "
        f"{args.settle * 1000:.0f} ms apart"
    )
    for name, ms in rows:
        print(f"  {name:<36} {ms:7.1f} ms  {ms / bare:5.1f}x bare bwrap")
    if args.alive:
        print(
            f"host memory with {args.alive} sandboxes alive ({len(pids)} processes, "
            f"{started_ahead} started ahead): {pss:.1f} MiB PSS, {rss:.1f} MiB RSS per sandbox"
        )


if __name__ == "__main__":
    main()
