"""A run's records on this machine: its lock, its record, its ledger; and sweeping by id.

The controller (or the only process) holds ``runs/<id>.lock`` (an flock, released by the kernel
however the process dies) and keeps a ledger of every sandbox the run created.  A later run
treats runs whose lock is free as dead and sweeps them; a live run's sandboxes are never
touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._paths import state_root

__all__ = [
    "Ledger",
    "RunLock",
    "RunRecord",
    "Swept",
    "forget_run",
    "runs_dir",
    "stale_runs",
    "sweep",
]


def runs_dir(root: Path | None = None) -> Path:
    path = (root or state_root()) / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class RunRecord:
    """What a later process needs to sweep a run: its backend and that backend's options."""

    run_id: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.time)

    def save(self, directory: Path) -> Path:
        path = directory / f"{self.run_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


class RunLock:
    """An exclusive flock held for a run's lifetime; its being free means the run is over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def is_held(path: Path) -> bool:
        """True while some live process holds the lock at ``path``."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def stale_runs(directory: Path) -> list[RunRecord]:
    """Runs recorded in ``directory`` whose controller no longer holds the run lock."""
    stale = []
    for path in sorted(directory.glob("*.json")):
        record = RunRecord.load(path)
        if record is None:
            continue
        if not RunLock.is_held(directory / f"{record.run_id}.lock"):
            stale.append(record)
    return stale


def forget_run(directory: Path, run_id: str) -> None:
    """Remove a run's files: its record, lock, ledger and claim locks (``<id>.d/``)."""
    for suffix in (".json", ".lock", ".ledger"):
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{run_id}{suffix}").unlink()
    shutil.rmtree(directory / f"{run_id}.d", ignore_errors=True)


class Ledger:
    """Append-only record of the sandboxes a run created and terminated (one file per run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, event: str, sandbox_id: str, **info: str) -> None:
        line = json.dumps({"event": event, "id": sandbox_id, "t": time.time(), **info})
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def live(self) -> dict[str, dict[str, Any]]:
        """Created and not yet terminated: id -> the creation entry."""
        live: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            if entry.get("event") == "created":
                live[entry["id"]] = entry
            elif entry.get("event") == "terminated":
                live.pop(entry["id"], None)
        return live


@dataclass
class Swept:
    """What a sweep did: the ids whose termination the backend accepted, and those it could
    not end (id -> the last error, after the backend's own retries)."""

    ended: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def failures(self, limit: int = 5) -> str:
        """``sb-1 (RetriesExhausted: ...), sb-2 (...)``: what could not be ended, and why."""
        parts = [f"{sid} ({why})" for sid, why in list(self.failed.items())[:limit]]
        more = f", and {len(self.failed) - limit} more" if len(self.failed) > limit else ""
        return ", ".join(parts) + more


def sweep(
    terminate: Callable[[str], None],
    ids: Iterable[str],
    *,
    workers: int = 8,
) -> Swept:
    """Terminate every id in parallel; errors and a second Ctrl-C do not stop the others.

    ``terminate`` retries transient failures itself until its deadline (the backend's
    policy); what still fails is in :attr:`Swept.failed`, for the caller to say.
    """
    todo = list(dict.fromkeys(ids))
    swept = Swept()
    if not todo:
        return swept

    def one(sandbox_id: str) -> str | None:
        try:
            terminate(sandbox_id)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return f"{type(exc).__name__}: {first}"
        return None

    pool = ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="pms-sweep")
    futures = [(sid, pool.submit(one, sid)) for sid in todo]
    for sid, fut in futures:
        while True:
            try:
                error = fut.result()
                break
            except KeyboardInterrupt:  # keep sweeping; the interrupt already ends the run
                continue
        if error is None:
            swept.ended.append(sid)
        else:
            swept.failed[sid] = error
    pool.shutdown(wait=False)
    return swept
