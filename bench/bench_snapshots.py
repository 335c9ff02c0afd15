"""A fresh prepared state per test: clones of a template against preparing per test and against
sharing one sandbox.

    .venv/bin/python bench/bench_snapshots.py [--backend local|modal] [--latency-ms 80]
        [--start-latency-ms 1000] [--prepare 3] [--tests 8] [--reps 3]

The same suite three ways, each an inner ``pytest`` run; every test reads the prepared file and
writes one of its own:

``clone``
    ``sandbox_fixture(snapshot_of="template")``: a session-scoped template whose ``prepare``
    takes ``--prepare`` seconds runs it once, is snapshotted, and every test gets a fresh clone
    (fresh state per test).
``fresh``
    a function-scoped sandbox per test, prepared in the test's fixture (fresh state per test,
    the slow way).
``shared``
    one session-scoped sandbox, prepared once (no fresh state: the tests see each other's
    writes) - the floor.

It prints each wall time (median of ``--reps``), the cost per test above ``shared``
(``(wall - shared) / tests``) and the ratios.  ``--backend modal`` runs against an emulator
started here that charges Modal's costs (``--latency-ms`` per RPC, ``--start-latency-ms`` before
a new sandbox's container is usable); the default ``--backend local`` runs on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import textwrap
from pathlib import Path

from bench_ahead import bench_environment, inner_pytest

SUITE = """
import pytest

from pytest_modal_sandbox import sandbox_fixture

def prepare(sb):
    sb.sh("sleep {prepare} && mkdir -p /srv && echo seeded > /srv/data").check()

VARIANT = "{variant}"
if VARIANT == "clone":
    template = sandbox_fixture(scope="session", prepare=prepare)
    box = sandbox_fixture(snapshot_of="template")
elif VARIANT == "fresh":
    raw = sandbox_fixture()

    @pytest.fixture
    def box(raw):
        prepare(raw)
        return raw
else:
    shared = sandbox_fixture(scope="session")

    @pytest.fixture(scope="session")
    def box(shared):
        prepare(shared)
        return shared


@pytest.mark.parametrize("n", range({tests}))
def test_work(box, n):
    assert box.read_file("/srv/data") == b"seeded\\n"
    box.write_file(f"/srv/test-{{n}}", "mine")
"""
VARIANTS = ("clone", "fresh", "shared")


def run_suite(root: Path, variant: str, opts: argparse.Namespace, env: dict[str, str]) -> float:
    """Wall seconds of one inner pytest run."""
    with tempfile.TemporaryDirectory(prefix=f"pms-bench-snap-{variant}-", dir=root) as tmp:
        path = Path(tmp)
        (path / "test_suite.py").write_text(
            textwrap.dedent(SUITE).format(variant=variant, tests=opts.tests, prepare=opts.prepare)
        )
        return inner_pytest(path, opts.backend, [], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="local", choices=["local", "modal"])
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--start-latency-ms", type=float, default=1000.0)
    parser.add_argument("--prepare", type=float, default=3.0)
    parser.add_argument("--tests", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    with bench_environment(opts, "pms-bench-snap-") as (root, env, where):
        print(
            f"{where}; {opts.tests} tests; prepare {opts.prepare:g} s; median of "
            f"{opts.reps}; {os.cpu_count()} cores"
        )
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(opts.reps):  # interleaved: a busy moment hits every variant alike
            for variant in VARIANTS:
                samples[variant].append(run_suite(root, variant, opts, env))
        walls = {v: statistics.median(s) for v, s in samples.items()}
        print(f"{'variant':>8}  {'wall':>7}  {'per test above shared':>21}")
        for variant in VARIANTS:
            extra = (walls[variant] - walls["shared"]) / opts.tests
            print(f"{variant:>8}  {walls[variant]:>6.2f}s  {extra:>20.2f}s")
        print(
            f"fresh / clone: {walls['fresh'] / walls['clone']:.2f}; "
            f"clone / shared: {walls['clone'] / walls['shared']:.2f}"
        )


if __name__ == "__main__":
    main()
