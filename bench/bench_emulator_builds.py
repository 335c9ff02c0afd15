"""Cold and warm build time of a small ``modal.Image`` chain on the emulator (median of N).

    .venv/bin/python bench/bench_emulator_builds.py [--n 7]

The chain is ``Image.from_registry(<busybox image on a registry started here>)
.run_commands("echo built > /built")``; each row is the time until ``Sandbox.create`` returns
for a fresh ``Image`` object (so the image RPCs, pull, unpack and build are all in it):

* cold: a new cache — pull + unpack + build;
* build only: the base image cached, a new RUN step;
* warm, same emulator / new emulator: the chain built before (memory / disk cache);
* no RUN step: the cached image alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "emulator")]
os.environ["MODAL_DISABLE_API_PROXY"] = "1"
_config = Path(tempfile.mkdtemp()) / "modal.toml"
_config.touch()
os.environ["MODAL_CONFIG_PATH"] = str(_config)  # never a developer's own ~/.modal.toml

import modal  # noqa: E402
from emulator_helpers import open_client  # noqa: E402

from pytest_modal_sandbox.emulator import EmulatorProcess  # noqa: E402
from registry import LocalRegistry  # noqa: E402

STEP = "echo built > /built"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=7)
    n = parser.parse_args().n
    work = Path(tempfile.mkdtemp(prefix="bench-builds-"))
    registry = LocalRegistry(work / "registry")
    ref = registry.push_image("bench/busybox", "v1").reference

    def emulator(cache: Path, tag: str) -> tuple[EmulatorProcess, Any, Any]:
        env = dict(os.environ, PYTEST_MODAL_SANDBOX_CACHE_DIR=str(cache))
        proc = EmulatorProcess(state_dir=work / f"state-{tag}", images="pull", env=env).start()
        client = open_client(proc.url)
        return proc, client, modal.App.lookup("bench", create_if_missing=True, client=client)

    def timed(app: Any, client: Any, step: str) -> float:
        image = modal.Image.from_registry(ref).run_commands(step)
        t0 = time.perf_counter()
        sb = modal.Sandbox.create(image=image, app=app, client=client)
        took = time.perf_counter() - t0
        assert sb.exec("cat", "/built").stdout.read() == "built\n"
        sb.terminate()
        return took

    rows: dict[str, list[float]] = {
        "cold: pull + unpack + build": [],
        "build only (image cached)": [],
        "warm, same emulator": [],
        "warm, new emulator (disk cache)": [],
        "no RUN step (image cached)": [],
    }
    try:
        for i in range(n):
            cache = work / f"cache-{i}"
            proc, client, app = emulator(cache, f"{i}a")
            rows["cold: pull + unpack + build"].append(timed(app, client, STEP))
            rows["warm, same emulator"].append(timed(app, client, STEP))
            rows["build only (image cached)"].append(timed(app, client, f"{STEP} # {i}"))
            t0 = time.perf_counter()
            sb = modal.Sandbox.create(image=modal.Image.from_registry(ref), app=app, client=client)
            rows["no RUN step (image cached)"].append(time.perf_counter() - t0)
            sb.terminate()
            client.__exit__(None, None, None)
            proc.stop()
            proc, client, app = emulator(cache, f"{i}b")
            rows["warm, new emulator (disk cache)"].append(timed(app, client, STEP))
            client.__exit__(None, None, None)
            proc.stop()
    finally:
        registry.close()
    print(f"| chain until Sandbox.create returns (n={n}) | p50 | min | max |")
    print("|---|---|---|---|")
    for name, xs in rows.items():
        ms = [x * 1000 for x in xs]
        print(f"| {name} | {statistics.median(ms):.0f} ms | {min(ms):.0f} ms | {max(ms):.0f} ms |")


if __name__ == "__main__":
    main()
