"""Pull, unpack and prune as an unprivileged user (the common case on laptops and CI)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_modal_sandbox.images.unpack import remove_tree
from registry import LocalRegistry, busybox_layer, directory, file, whiteout

SETPRIV = shutil.which("setpriv")
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="needs root to drop to an unprivileged user with setpriv",
)

SCRIPT = textwrap.dedent("""
    import json, os, stat, sys
    from pytest_modal_sandbox.images import ImageStore
    store = ImageStore(sys.argv[1])
    root = store.get(sys.argv[2])
    meta = json.loads((root.path.parent / "image.json").read_text())
    fs = root.path
    result = {
        "uid": os.geteuid(),
        "ro_mode": stat.S_IMODE(os.stat(fs / "ro").st_mode),
        "suid_mode": stat.S_IMODE(os.stat(fs / "ro/suid").st_mode),
        "later": (fs / "ro/later").read_text(),
        "gone": os.path.exists(fs / "ro/gone"),
        "owner": os.lstat(fs / "ro/suid").st_uid,
        "owners": meta["owners"],
        "as_root": meta["unpacked_as_root"],
        "busybox": os.access(fs / "bin/busybox", os.X_OK),
    }
    result["pruned"] = len(store.prune())
    result["left"] = sorted(p.name for p in (store.root / "roots").iterdir())
    print(json.dumps(result))
""")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="pms-nonroot-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        remove_tree(path)


# this interpreter, run as the unprivileged user
AS_NOBODY = [
    str(SETPRIV),
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    sys.executable,
]


def _nobody_can_run_this_python() -> bool:
    """Our interpreter may live where an unprivileged user cannot load it (a 0700 home, a
    shared libpython beside it)."""
    probe = subprocess.run(
        [*AS_NOBODY, "-c", "import pytest_modal_sandbox.images"],
        capture_output=True,
        cwd="/",
        env={**os.environ, "HOME": "/"},
    )
    return probe.returncode == 0


def test_unprivileged_pull_unpack_and_prune(registry: LocalRegistry, shared_tmp: Path) -> None:
    if not _nobody_can_run_this_python():
        pytest.skip("the unprivileged user cannot run this interpreter or import this checkout")
    image = registry.push_image(
        "nonroot/app",
        "v1",
        [
            busybox_layer(),
            [
                directory("ro", mode=0o555),
                file("ro/suid", "x", mode=0o4755, uid=1000, gid=1000),
                file("ro/gone"),
            ],
            [file("ro/later", "written into a 0555 dir"), whiteout("ro/gone")],
        ],
    )
    cache = shared_tmp / "cache"
    cache.mkdir()
    os.chown(cache, NOBODY, NOBODY)
    env = {**os.environ, "HOME": str(cache), "DOCKER_CONFIG": str(cache)}
    proc = subprocess.run(
        [*AS_NOBODY, "-c", SCRIPT, str(cache), image.reference],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["uid"] == NOBODY
    assert result["ro_mode"] == 0o555 and result["suid_mode"] == 0o4755
    assert result["later"] == "written into a 0555 dir" and not result["gone"]
    assert result["owner"] == NOBODY  # cannot chown as non-root: recorded instead
    assert result["owners"] == {"/ro/suid": [1000, 1000]}
    assert result["as_root"] is False and result["busybox"]
    assert result["pruned"] == 1 and result["left"] == []  # 0555 dirs did not stop removal
    assert stat.S_IMODE(cache.stat().st_mode) & 0o700 == 0o700
