"""``mounts=``: what a tree of many files costs a sandbox's start, per backend.

    .venv/bin/python bench/bench_mounts.py [--files 5000] [--size 1000] [--reps 5]
        [--backends local emulator]

Makes a tree of ``--files`` files of ``--size`` bytes (in 50 directories), then on each
backend starts sandboxes through :func:`pytest_modal_sandbox.start` alternately without and
with ``mounts={"/srv/app": tree}`` (side by side, so the machine's load hits both alike) and
prints the median start time of each and the difference.  The first start with the mount is
reported apart on the emulator: that is when the client uploads the files (later starts only
hash them and find them there).  Each start with the mount checks one file inside.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        d = root / f"d{i % 50}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.py").write_bytes(b"x" * size)


def timed_start(spec: Any, backend: Any, check: str | None) -> float:
    from pytest_modal_sandbox import start

    t0 = time.monotonic()
    with start(spec, backend=backend) as sb:
        elapsed = time.monotonic() - t0
        if check is not None:
            assert sb.exec("test", "-f", check).returncode == 0
    return elapsed


def bench(name: str, backend: Any, tree: Path, reps: int) -> None:
    from pytest_modal_sandbox import SandboxSpec

    plain = SandboxSpec()
    mounted = SandboxSpec(mounts={"/srv/app": str(tree)})
    first = timed_start(mounted, backend, "/srv/app/d0/f0.py")
    without, with_ = [], []
    for _ in range(reps):
        without.append(timed_start(plain, backend, None))
        with_.append(timed_start(mounted, backend, "/srv/app/d0/f0.py"))
    a, b = statistics.median(without), statistics.median(with_)
    print(
        f"{name:9} first start with the mount {first:6.2f}s; median of {reps}: "
        f"without {a:5.2f}s, with {b:5.2f}s (+{b - a:.2f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["local", "emulator"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mounts-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        make_tree(tree, args.files, args.size)
        print(f"a tree of {args.files} files of {args.size} bytes")
        for name in args.backends:
            if name == "local":
                from pytest_modal_sandbox.backends import make_backend

                be = make_backend("local", state_dir=Path(tmp) / "state")
                try:
                    bench(name, be, tree, args.reps)
                finally:
                    be.close()
                continue
            from pytest_modal_sandbox.backends import make_backend
            from pytest_modal_sandbox.emulator import EmulatorProcess

            emu = EmulatorProcess(state_dir=Path(tmp) / "emu", images="host").start()
            try:
                be = make_backend("emulator", server_url=emu.url)
                try:
                    bench(name, be, tree, args.reps)
                finally:
                    be.close()
            finally:
                emu.stop()


if __name__ == "__main__":
    main()
