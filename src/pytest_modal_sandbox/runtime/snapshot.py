"""Filesystem snapshots of local sandboxes: what a sandbox wrote, kept as overlayfs layers.

A sandbox's root is an overlayfs whose upper directories (one per layer of the root, see
``hostview.py`` and ``rootfs.py``) hold everything it wrote - new files, whiteouts for deleted
ones, opaque directories - and nothing of the image.  They live on a tmpfs in the keeper's
private mount namespace, which the host reaches through ``/proc/<keeper>/root``.  A snapshot is
a copy of those upper directories (``cp -a``: owners, modes, xattrs, whiteouts kept), plus, for
an image root, the sandbox's private ``/tmp`` (a tmpfs of its own, reached through
``/proc/<PID 1>/root/tmp``) written into the root layer as an opaque directory, so a clone sees
``/tmp`` as the sandbox left it, as on Modal.  The image itself is never copied.

A clone is started with ``SandboxConfig.layers``.  Over an image root they are stacked, newest
first, between the clone's own fresh upper and the image: nothing is copied per clone, and a
snapshot of a clone adds its own layer on top of the ones it was started from.  Over the host's
root (host-image mode) overlayfs refuses a lower layer inside ``/``, so the clone's upper starts
as a copy of the snapshot's (``hostview.overlay_plan``); it then holds the whole difference from
the host, and a snapshot of it is that layer alone.

Taken while the sandbox runs (as Modal does): a file being written at that moment may be caught
half-written, so let a daemon flush first (e.g. ``redis-cli save``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import errors
from .rootfs import copy_tree

__all__ = ["capture", "problem", "remove", "store_dir", "take"]


def capture(
    meta: Mapping[str, Any],
    *,
    keeper_pid: int,
    init_pid: int,
    state_dir: Path,
    dest: Path,
    still_running: Callable[[], object],
) -> tuple[tuple[str, str], ...]:
    """Copy what the sandbox wrote into ``dest`` (created); returns the clone's ``layers``:
    ``(target, dir)`` pairs, newest first (these, then those the sandbox was started from).

    ``still_running`` raises if the sandbox ended (checked after the copy, so a pid reused
    meanwhile cannot have lent us someone else's files)."""
    uppers: list[str | None] | None = meta.get("uppers")
    if uppers is None:
        why = (
            "its root is a copy of the image (overlayfs was refused here)"
            if meta.get("rootfs")
            else "not as root, the host's root is read-only in a sandbox"
        )
        raise errors.SandboxError(
            f"cannot snapshot sandbox {meta['id']}: {why}; snapshots need a copy-on-write root "
            "(overlayfs), as root or with an image the user owns"
        )
    dest.mkdir(parents=True)
    try:
        layers: list[tuple[str, str]] = []
        ovl = f"/proc/{keeper_pid}/root{state_dir}/ovl/upper"
        for index, target in enumerate(uppers):
            if target is None:
                continue
            layer = dest / str(index)
            layer.mkdir()
            _copy(f"{ovl}/{index}", layer)
            if target == "/" and meta.get("private_tmp"):
                _capture_tmp(f"/proc/{init_pid}/root/tmp", layer / "tmp")
            layers.append((target, str(layer)))
        still_running()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if meta.get("rootfs") is None:  # host view: the upper was seeded with the older layers
        return tuple(layers)
    return (*layers, *((str(t), str(d)) for t, d in meta.get("layers", ())))


def _capture_tmp(source: str, target: Path) -> None:
    """The sandbox's private ``/tmp`` as an opaque directory of the root layer (it hid the
    image's ``/tmp``, so the snapshot does too)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.mkdir()
    _copy(source, target)
    st = os.stat(source)
    os.chmod(target, st.st_mode & 0o7777)
    os.chown(target, st.st_uid, st.st_gid)
    xattr = "trusted" if os.geteuid() == 0 else "user"
    os.setxattr(target, f"{xattr}.overlay.opaque", b"y")


def _copy(source: str, target: Path) -> None:
    try:
        copy_tree(source, target, what="a sandbox's files for a snapshot")
    except errors.SandboxStartError as exc:  # not starting anything: a snapshot failed
        raise errors.SandboxError(str(exc)) from None


# --- the store: one directory per snapshot, beside the runtime's state dir --------------------


def store_dir(runtime_root: Path) -> Path:
    """Where the snapshots of the runtime at ``runtime_root`` are kept (not inside it: the
    runtime's own directory holds only sandboxes)."""
    return runtime_root.parent / f"{runtime_root.name}-snapshots"


def take(
    store: Path,
    snapshot_id: str,
    take_layers: Callable[[Path], tuple[tuple[str, str], ...]],
    *,
    run: str,
    kept: bool,
    source: str,
) -> tuple[tuple[str, str], ...]:
    """Capture into ``store/<snapshot_id>`` with its record (``run``, ``kept``)."""
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    home = store / snapshot_id
    layers = take_layers(home / "layers")
    record = {"id": snapshot_id, "run": run, "kept": kept, "source": source}
    (home / "snapshot.json").write_text(json.dumps({**record, "created_at": time.time()}))
    return layers


def problem(layers: Iterable[tuple[str, str]]) -> str | None:
    """Why ``layers`` cannot start a clone (None: they can): each must be a layer of a
    snapshot taken on this machine, still there - never any other directory of the host."""
    for _, directory in layers:
        layer = Path(directory)
        home = layer.parent.parent
        if layer.parent.name != "layers" or not home.name.startswith("snap-"):
            return f"{directory} is not a layer of a snapshot taken on this machine"
        if not (home / "snapshot.json").is_file() or not layer.is_dir():
            return (
                f"its files are gone ({home}): removed at the end of the run that took it, or "
                "by `images prune`; take it again, or keep it with snapshot(keep=True)"
            )
    return None


def remove(
    store: Path,
    *,
    run: str | None = None,
    in_use: Iterable[str] = (),
    older_than: float = 0.0,
    dry_run: bool = False,
    live: Callable[[str], bool] = lambda _run: False,
) -> list[str]:
    """Remove snapshots: with ``run``, that run's that were not kept; without, every one taken
    more than ``older_than`` seconds ago, kept or not (``images prune``), except those of runs
    still going (``live(run_id)``: a test may start a clone of it any moment).  Those under a
    directory in ``in_use`` (layers of running sandboxes) stay.  Returns the ids removed (that
    would be, with ``dry_run``)."""
    used = [Path(d) for d in in_use]
    removed: list[str] = []
    for home in sorted(store.glob("snap-*")) if store.is_dir() else []:
        try:
            record = json.loads((home / "snapshot.json").read_text())
        except (OSError, ValueError):
            record = {}
        if run is not None and (record.get("run") != run or record.get("kept")):
            continue
        if run is None and not record.get("kept") and record.get("run") and live(record["run"]):
            continue
        if any(home == d or home in d.parents for d in used):
            continue
        if older_than and time.time() - float(record.get("created_at", 0)) < older_than:
            continue
        if not dry_run:
            shutil.rmtree(home, ignore_errors=True)
        removed.append(home.name)
    return removed
