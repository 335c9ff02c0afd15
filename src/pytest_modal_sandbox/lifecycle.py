"""Run identity, the run lock, the ledger, sweeps and signal handling — pytest-free.

A *run* is one pytest invocation (the controller and all its xdist workers).  The controller
(or the only process) mints the run id, holds ``runs/<id>.lock`` (an flock, released by the
kernel however the process dies) and keeps a ledger of every sandbox the run created.  Every
sandbox carries the run id as a tag, so a sweep finds it even if nobody recorded it.  A later
run treats runs whose lock is free as dead and sweeps them; a live run's sandboxes are never
touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._paths import state_root

__all__ = [
    "RUN_TAG",
    "Ledger",
    "RunLock",
    "RunRecord",
    "install_sigint_handler",
    "install_sigterm_handler",
    "interrupt_seen",
    "kill_with_this_process",
    "new_run_id",
    "run_tags",
    "runs_dir",
    "stale_runs",
    "sweep",
]

MARK_TAG = "pytest-modal-sandbox"
RUN_TAG = "pms-run"
WORKER_TAG = "pms-worker"
TEST_TAG = "pms-test"
SPEC_TAG = "pms-spec"
SHARE_TAG = "pms-share"
KEEP_TAG = "pms-keep-until"


def new_run_id() -> str:
    """Sortable and unique: ``20261126-062433-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_tags(run_id: str, worker: str, *, test: str, spec_hash: str, share: str) -> dict[str, str]:
    """The tags every sandbox is created with, so any sweep can find it."""
    return {
        MARK_TAG: "1",
        RUN_TAG: run_id,
        WORKER_TAG: worker,
        TEST_TAG: test[-200:],
        SPEC_TAG: spec_hash,
        SHARE_TAG: share,
    }


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


def sweep(
    terminate: Callable[[str], None],
    ids: Iterable[str],
    *,
    workers: int = 8,
) -> list[str]:
    """Terminate every id in parallel; errors and a second Ctrl-C do not stop the others.

    Returns the ids it asked to terminate.
    """
    todo = list(dict.fromkeys(ids))
    if not todo:
        return []

    def one(sandbox_id: str) -> None:
        with contextlib.suppress(Exception):
            terminate(sandbox_id)

    pool = ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="pms-sweep")
    futures = [pool.submit(one, sid) for sid in todo]
    for fut in futures:
        while True:
            try:
                fut.result()
                break
            except KeyboardInterrupt:  # keep sweeping; the interrupt already ends the run
                continue
    pool.shutdown(wait=False)
    return todo


# -- signals ------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    restore = install_sigterm_handler()
    try:
        yield
    finally:
        restore()


def install_sigterm_handler() -> Callable[[], None]:
    """Make SIGTERM behave like Ctrl-C (``KeyboardInterrupt``) so finalizers and sweeps run.

    A previous Python handler is called first (chained); an ignored SIGTERM stays ignored.
    Returns a function that restores the previous handler.  Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        _INTERRUPT.raise_(frame, f"received signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return restore


class _Interrupt:
    """Ctrl-C and SIGTERM as a ``KeyboardInterrupt`` that cannot be lost.

    A blocking ``modal`` call that a ``KeyboardInterrupt`` hits cancels its coroutine and then
    waits for it; when the client's code absorbs the cancellation, the call returns normally
    and the interrupt is gone (seen: a readiness wait that went on polling after Ctrl-C, its
    sandbox alive until the probe's timeout).  So an interrupt that lands in such a call is
    delivered again every ``redeliver`` seconds until pytest has seen it
    (:func:`interrupt_seen`).  Anywhere else it is raised once, as usual.
    """

    def __init__(self, redeliver: float = 2.0) -> None:
        self.redeliver = redeliver
        self.pending = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def raise_(self, frame: Any, message: str = "") -> None:
        if _in_blocking_client_call(frame):
            with self._lock:
                self.pending = True
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._watch, name="pms-interrupt", daemon=True
                    )
                    self._thread.start()
        raise KeyboardInterrupt(message) if message else KeyboardInterrupt

    def _watch(self) -> None:
        """Deliver it again at a moment the main thread is outside the client's calls."""
        import _thread

        main = threading.main_thread().ident
        time.sleep(self.redeliver)
        while self.pending:
            frame = sys._current_frames().get(main) if main is not None else None
            if frame is None:
                return
            if _in_blocking_client_call(frame):
                time.sleep(0.01)
                continue
            _thread.interrupt_main(signal.SIGINT)  # runs our SIGINT handler in the main thread
            time.sleep(self.redeliver)


_INTERRUPT = _Interrupt()


def _in_blocking_client_call(frame: Any) -> bool:
    """Whether the main thread is waiting in a synchronicity (``modal`` client) blocking call."""
    depth = 0
    while frame is not None and depth < 80:
        if "synchronicity" in frame.f_code.co_filename:
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def interrupt_seen() -> None:
    """pytest has the interrupt (its ``pytest_keyboard_interrupt`` ran, or the session is
    finishing): stop delivering it again."""
    _INTERRUPT.pending = False


def install_sigint_handler() -> Callable[[], None]:
    """Ctrl-C as a ``KeyboardInterrupt`` that is not lost (see :class:`_Interrupt`).

    Our handler also keeps the ``modal`` client from swapping in its own SIGINT handler (it does
    so only over Python's default).  Installed only over the default handler (an ignored
    SIGINT stays ignored); returns a function that restores it.  Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPT.raise_(frame)

    signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        interrupt_seen()
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    return restore


def live_ids(ledger: Ledger, listed: Mapping[str, Any]) -> list[str]:
    """The union of what the ledger says is alive and what the backend lists."""
    return list(dict.fromkeys([*ledger.live(), *listed]))


# -- tying a helper process to this one ---------------------------------------------------------

_WATCHDOG = r"""
import os, select, signal, sys
pidfd = os.pidfd_open(int(sys.argv[1]))
grace = float(sys.argv[2])
while True:
    try:
        if not os.read(0, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
try:
    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
except OSError:
    sys.exit(0)
if not select.select([pidfd], [], [], grace)[0]:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
"""


def kill_with_this_process(pid: int, *, grace: float = 10.0) -> Callable[[], None]:
    """Make sure process ``pid`` (our child, in its own session) ends when this process does,
    however it ends — SIGKILL included.

    A tiny watchdog in a session of its own (a signal to our process group does not reach it)
    waits for EOF on a pipe only this process holds; then it sends ``pid`` SIGTERM and, after
    ``grace`` seconds, SIGKILL.  It holds a pidfd, so a reused pid is never hit.  Returns a
    function that ends the watchdog the same way (call it after stopping ``pid`` yourself).
    """
    read_end, write_end = os.pipe()  # not inheritable: workers we spawn do not keep it open
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pid), str(grace)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)

    held = [write_end]

    def release() -> None:
        while held:
            os.close(held.pop())
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace + 5)

    return release
