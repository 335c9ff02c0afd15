"""Offline stand-in for a registry holding your database image (test_app_and_database.py).

In your project the image is on a registry already (``image="postgres:16"``).  Here, with
no network, a registry is started on 127.0.0.1 (Debian's ``docker-registry``, as the test
suite does: ``tests/registry.py``) and a small database image is pushed to it: busybox, the
machine's ``redis-server`` and ``redis-cli`` with their libraries, and an entrypoint script
that configures the server from the environment, as official images do.  Its reference is
``$EXAMPLE_DB_IMAGE`` for the example to use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ENTRYPOINT = """#!/bin/sh
# like an official image's docker-entrypoint.sh: configuration from the environment
set -e
if [ -z "$DB_PASSWORD" ]; then
    echo "error: the database needs DB_PASSWORD" >&2
    exit 1
fi
mkdir -p /data
exec redis-server --requirepass "$DB_PASSWORD" --dir /data "$@"
"""


def _files_with_libraries(*programs: str) -> dict[str, bytes]:
    """Each program and the shared libraries it loads, at their paths on this machine."""
    out: dict[str, bytes] = {}
    for program in programs:
        path = os.path.realpath(shutil.which(program) or program)
        out[f"usr/bin/{program}"] = Path(path).read_bytes()
        ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+\.so[.\d]*) \(", ldd):
            out[lib.lstrip("/")] = Path(os.path.realpath(lib)).read_bytes()
    return out


def _push_database_image(workdir: Path) -> tuple[object, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from registry import LocalRegistry, busybox_layer, directory, file

    registry = LocalRegistry(workdir)
    files = {**_files_with_libraries("redis-server", "redis-cli")}
    files["usr/local/bin/docker-entrypoint.sh"] = ENTRYPOINT.encode()
    dirs = sorted({str(Path(p).parent) for p in files} | {"usr/local/bin"})
    entries = [directory(d) for d in dirs]
    entries += [file(p, data, mode=0o755) for p, data in files.items()]
    pushed = registry.push_image(
        "example/database",
        "1",
        [busybox_layer(), entries],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        workdir="/data",
        entrypoint=["docker-entrypoint.sh"],
        cmd=["--port", "6379", "--save", ""],
    )
    return registry, pushed.reference


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EXAMPLE_DB_IMAGE") or shutil.which("redis-server") is None:
        return
    workdir = Path(tempfile.mkdtemp(prefix="example-registry-"))
    registry, reference = _push_database_image(workdir)
    os.environ["EXAMPLE_DB_IMAGE"] = reference

    def stop() -> None:
        registry.close()  # type: ignore[attr-defined]
        os.environ.pop("EXAMPLE_DB_IMAGE", None)
        shutil.rmtree(workdir, ignore_errors=True)

    config.add_cleanup(stop)
