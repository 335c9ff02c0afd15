"""One process's part in a run: its backend, its sandboxes, and for the run's owner the run
lock, the ledger and the sweeps — pytest-free.

Every pytest process (the controller, each xdist worker, or the only process) has one
:class:`Run`.  Workers create sandboxes and report what they did as events (:class:`Event`); the
controller (or the only process) owns the run lock and the ledger and runs the sweeps.  Shared
(``share="run"``) sandboxes are claimed by a deterministic name under a file lock, attached to by
the others, and terminated only by the run's owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from . import daemons
from .backends import make_backend
from .backends.protocol import Backend, NameTaken
from .errors import SandboxError
from .events import LIFECYCLE, Event
from .launch import launch
from .lifecycle.runs import (
    Ledger,
    RunLock,
    RunRecord,
    Swept,
    forget_run,
    runs_dir,
    stale_runs,
    sweep,
)
from .lifecycle.tags import KEEP_TAG, RUN_TAG, SHARE_TAG, WORKER_TAG, run_tags
from .sandbox import Sandbox
from .spec import SandboxSpec

__all__ = ["Role", "Run", "Share"]

Role = Literal["standalone", "controller", "worker"]
Share = Literal["function", "worker", "run"]


class Run:
    """What one process does with the run's sandboxes: start, share, finish, sweep."""

    def __init__(
        self,
        *,
        role: Role,
        run_id: str,
        worker: str,
        backend_name: str,
        backend_options: Mapping[str, Any] | None = None,
        log_lines: int = 20,
        state_dir: Path | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.role = role
        self.run_id = run_id
        self.worker = worker
        self.backend_name = backend_name
        self.backend_options = dict(backend_options or {})
        self.log_lines = log_lines
        self.runs = runs_dir(state_dir)
        self.ledger = Ledger(self.runs / f"{run_id}.ledger")
        self.run_lock_path = self.runs / f"{run_id}.lock"
        self._run_lock: RunLock | None = None
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        self.on_event = on_event or (lambda event: None)
        self._ender: ThreadPoolExecutor | None = None  # terminations, off the test's path
        self._ending: list[Future[None]] = []
        self._ending_lock = threading.Lock()
        self.sandboxes: list[Sandbox] = []  # every sandbox this process started or attached
        self.swept: list[str] = []
        self.unended: list[str] = []  # what the end-of-run sweep could not end
        self.unlisted = False  # the end-of-run sweep could not list the run's sandboxes
        self.crashed_workers: list[str] = []
        self._pending: list[threading.Thread] = []
        self._reports: list[str] = []  # what the termination layers did, for the terminal
        self._reports_lock = threading.Lock()

    # -- the run (controller / only process) ------------------------------------------------

    @property
    def owns_run(self) -> bool:
        return self.role != "worker"

    def begin_run(self) -> None:
        """Take the run lock and record the run, so a later run can tell if it died."""
        self._run_lock = RunLock(self.run_lock_path).acquire()
        RunRecord(self.run_id, self.backend_name, self._portable_options()).save(self.runs)

    def end_run(self) -> None:
        """Release the run lock and forget the run - unless it kept a sandbox on failure, or a
        sweep could not end (or list) its sandboxes: the record stays, so a later run's stale
        sweep ends them (a kept one after its deadline)."""
        if self._run_lock is not None:  # the run's owner, once every worker is done
            self._remove_snapshots(self.run_id)
            self._run_lock.release()
            self._run_lock = None
            if self.backend_name == "emulator" or not (
                self.kept_ids() or self.unended or self.unlisted
            ):
                forget_run(self.runs, self.run_id)  # the emulator's sandboxes end with it

    def _remove_snapshots(self, run_id: str) -> None:
        """A run's local snapshots that were not kept (``images prune`` removes the rest)."""
        from .backends.protocol import SnapshotsCleanup

        if self.backend_name != "local":
            return
        backend = self.backend
        if isinstance(backend, SnapshotsCleanup):
            with contextlib.suppress(Exception):
                backend.remove_snapshots(run_id)

    def _portable_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.backend_options.items() if isinstance(v, (str, int, float))}

    # -- backend ---------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        with self._backend_lock:
            if self._backend is None:
                options = dict(self.backend_options)
                if self.backend_name == "local":
                    options.setdefault("owner_lock", str(self.run_lock_path))
                self._backend = make_backend(self.backend_name, **options)
            return self._backend

    @property
    def backend_started(self) -> bool:
        return self._backend is not None

    # -- events ----------------------------------------------------------------------------

    def emit(self, kind: str, sandbox_id: str, *, share: str, test: str, **more: Any) -> None:
        """Tell the run's owner (through ``on_event``) what happened to a sandbox."""
        with contextlib.suppress(Exception):  # an event must never break a start or an end
            self.on_event(Event(kind, self.worker, sandbox_id, share, test, **more))

    def record(self, event: Event) -> None:
        """The run's owner: keep a lifecycle event (of any process) in the ledger."""
        if event.kind in LIFECYCLE:
            with contextlib.suppress(OSError):
                self.ledger.record(
                    event.kind,
                    event.sandbox_id,
                    worker=event.worker,
                    share=event.share,
                    test=event.test,
                )

    # -- starting and finishing ---------------------------------------------------------------

    def tags(self, spec: SandboxSpec, test: str, share: str) -> dict[str, str]:
        return run_tags(self.run_id, self.worker, test=test, spec_hash=spec.spec_hash, share=share)

    def launch(
        self,
        spec: SandboxSpec,
        *,
        test: str,
        share: Share = "function",
        key: str = "",
        on_created: Callable[[Sandbox], None] | None = None,
        start: str = "",
        label: str = "",
        quota_wait: float | None = None,
    ) -> Sandbox:
        """A ready sandbox; ``share="run"`` returns the run's one sandbox for ``key``.

        ``start`` and ``label`` ride on the events this emits, so the progress view can follow
        one start from request to ready; ``quota_wait`` is the backend's (``create``).
        """
        made: list[Sandbox] = []

        def created(sb: Sandbox) -> None:
            made.append(sb)
            self.emit("created", sb.id, share=share, test=test, start=start, label=label)
            if on_created is not None:
                on_created(sb)

        try:
            if share == "run":
                sandbox = self._shared(
                    spec, test=test, key=key, created=created, quota_wait=quota_wait
                )
            else:
                sandbox = launch(
                    self.backend,
                    spec,
                    tags=self.tags(spec, test, share),
                    log_lines=self.log_lines,
                    on_created=created,
                    quota_wait=quota_wait,
                )
        except BaseException:
            for sb in made:  # launch terminated it on the way out: the ledger must know
                self.emit("terminated", sb.id, share=share, test=test)
            raise
        self.sandboxes.append(sandbox)
        return sandbox

    def shared_name(self, key: str, spec: SandboxSpec) -> str:
        digest = hashlib.sha256(f"{key}|{spec.spec_hash}".encode()).hexdigest()[:10]
        return f"pms-{self.run_id}-{digest}"

    def _shared(
        self,
        spec: SandboxSpec,
        *,
        test: str,
        key: str,
        created: Callable[[Sandbox], None],
        quota_wait: float | None,
    ) -> Sandbox:
        """Claim or attach to the run's sandbox for ``key``: a file lock serialises local
        processes; the deterministic name is the claim the backend enforces."""
        name = self.shared_name(key, spec)
        claims = self.runs / f"{self.run_id}.d"
        claims.mkdir(exist_ok=True)
        with FileLock(str(claims / f"{name}.lock")):
            existing = self.backend.from_name(name)
            if existing is not None:
                sandbox = Sandbox(existing, spec, self.backend.name)
                if existing.finished() is None and daemons.is_marked_ready(sandbox):
                    sandbox.timings.created = sandbox.timings.ready = time.time()
                    return sandbox
                # its creator died before it was ready: replace it
                existing.terminate(wait=True)
            try:
                return launch(
                    self.backend,
                    spec,
                    tags=self.tags(spec, test, "run"),
                    name=name,
                    shared=True,
                    log_lines=self.log_lines,
                    on_created=created,
                    quota_wait=quota_wait,
                )
            except NameTaken:
                # another machine's process won the claim between our lookup and create
                winner = self.backend.from_name(name)
                if winner is None:
                    raise
                sandbox = Sandbox(winner, spec, self.backend.name)
                timeout = max([d.ready.timeout for d in spec.daemons if d.ready] or [60.0])
                deadline = time.monotonic() + timeout + 30
                while not daemons.is_marked_ready(sandbox):
                    if winner.finished() is not None or time.monotonic() > deadline:
                        raise SandboxError(
                            f"shared sandbox {name} ({winner.id}), started by another process, "
                            "did not become ready"
                        ) from None
                    time.sleep(0.5)
                return sandbox

    def terminates(self, share: str) -> bool:
        """Whether this process ends its own sandboxes of ``share``: a worker never ends the
        run's shared sandbox (the controller does, after every worker is done)."""
        return share != "run" or self.owns_run

    def finish(self, sandbox: Sandbox, *, share: Share, test: str) -> None:
        """Fixture teardown: end the sandbox in the background, so the next test does not wait
        for it — unless the run owns it and we don't: then only let go of it."""
        if not self.terminates(share):
            with contextlib.suppress(Exception):
                sandbox.release()
            return
        with self._ending_lock:
            if self._ender is None:
                self._ender = ThreadPoolExecutor(4, thread_name_prefix="pms-end")
            self._ending = [f for f in self._ending if not f.done()]
            self._ending.append(self._ender.submit(self.terminate, sandbox, share=share, test=test))

    def terminate(self, sandbox: Sandbox, *, share: str, test: str) -> None:
        """End the sandbox now (without waiting for it to be gone) and say so."""
        try:
            sandbox.terminate()
        except Exception:  # the sweeps end what this could not
            pass
        finally:
            self.emit("terminated", sandbox.id, share=share, test=test)
            with contextlib.suppress(Exception):
                sandbox.release()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout``) for the terminations :meth:`finish` started."""
        with self._ending_lock:
            pending = list(self._ending)
        deadline = time.monotonic() + timeout
        for future in pending:
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, deadline - time.monotonic()))

    def kept(self, sandbox: Sandbox, *, share: str, test: str) -> None:
        """A sandbox is kept alive on purpose (keep-on-failure, already untied and tagged
        ``KEEP_TAG``): this run's sweeps leave it alone, later runs end it after the tag's time."""
        self.emit("kept", sandbox.id, share=share, test=test)

    def kept_ids(self) -> set[str]:
        """Sandboxes of this run kept on failure (from every process, through the ledger)."""
        return {str(e.get("id")) for e in self.ledger.entries() if e.get("event") == "kept"}

    def _split_kept(self, run_id: str) -> tuple[list[str], list[str], bool] | None:
        """A stale run's sandboxes: (kept with a deadline still ahead, the others, whether any
        of the others was kept on failure and is past its deadline); None if the backend
        could not list them."""
        kept: list[str] = []
        others: list[str] = []
        expired = False
        try:
            listed = self.backend.list({RUN_TAG: run_id})
        except (SandboxError, OSError) as exc:
            self._report(f"stale run {run_id}: could not list its sandboxes ({_first(exc)})")
            return None
        for info in listed:
            try:
                until = float(info.tags.get(KEEP_TAG, "0"))
            except ValueError:
                until = 0.0
            (kept if until > time.time() else others).append(info.id)
            expired = expired or 0 < until <= time.time()
        return kept, others, expired

    # -- sweeps ----------------------------------------------------------------------------

    def worker_down(self, worker: str) -> None:
        """Controller: a worker crashed; end its own (non-shared) sandboxes, in the background."""
        self.crashed_workers.append(worker)

        def work() -> None:
            live = self.ledger.live()
            ids = [
                i for i, e in live.items() if e.get("worker") == worker and e.get("share") != "run"
            ]
            unlisted = ""
            try:
                ids += [
                    info.id
                    for info in self.backend.list({RUN_TAG: self.run_id, WORKER_TAG: worker})
                    if info.tags.get(SHARE_TAG) != "run"
                ]
            except Exception as exc:  # the end-of-run sweep lists again
                unlisted = f"; could not list its sandboxes ({_first(exc)})"
            swept = sweep(self.backend.terminate, ids)
            for sid in swept.ended:
                self.ledger.record("terminated", sid, worker=worker, share="crash")
            self.swept.extend(swept.ended)
            self._report(
                f"worker {worker} crashed: terminated {_count(swept.ended)} it had started"
                + _detail(swept.ended, live)
                + unlisted
                + _not_ended(swept)
            )

        thread = threading.Thread(target=work, name=f"pms-down-{worker}", daemon=True)
        thread.start()
        self._pending.append(thread)

    def sweep_run(self, keep: Callable[[str], bool] = lambda _id: False) -> list[str]:
        """Controller/only process, after every worker is gone: end all of this run's sandboxes
        (the ledger's and everything the backend lists under the run's tag)."""
        self.drain()
        for thread in self._pending:
            thread.join(timeout=30)
        live = self.ledger.live()
        asked = {e.get("id") for e in self.ledger.entries() if e.get("event") == "terminated"}
        ids = list(live)
        running: list[str] | None = None  # what the backend lists; None if it could not
        if ids or self.crashed_workers or self.backend_started:
            try:
                running = [info.id for info in self.backend.list({RUN_TAG: self.run_id})]
                ids += running
            except Exception as exc:
                self.unlisted = True
                self._report(
                    f"end of run: could not list this run's sandboxes ({_first(exc)}); "
                    "the next run's stale sweep ends what is left"
                )
        kept = self.kept_ids()  # kept on failure: ended by a later run, after its deadline
        ids = [i for i in dict.fromkeys(ids) if not keep(i) and i not in kept]
        if not ids:
            return []
        swept = sweep(self.backend.terminate, ids)
        for sid in swept.ended:
            with contextlib.suppress(OSError):
                self.ledger.record("terminated", sid, worker="controller", share="sweep")
        self.swept.extend(swept.ended)
        self.unended.extend(swept.failed)
        # news: what was still running and nobody had asked to end (a finalizer's
        # terminate does not wait, so its sandbox may still be listed for a moment)
        ended = [i for i in swept.ended if (running is None or i in running) and i not in asked]
        if ended:
            self._report(
                f"end of run: terminated {_count(ended)} still running" + _detail(ended, live)
            )
        if swept.failed:
            self._report("end of run:" + _not_ended(swept)[1:])
        return swept.ended

    def sweep_stale_runs(self) -> list[str]:
        """Start of a run: end the sandboxes of earlier runs that died without cleaning up."""
        swept: list[str] = []
        for record in stale_runs(self.runs):
            if record.run_id == self.run_id:
                continue
            if record.backend == self.backend_name:
                split = self._split_kept(record.run_id)
                if split is None:
                    continue  # could not list: keep the record for a later run
                kept, others, expired = split
                done = sweep(self.backend.terminate, others)
                swept += done.ended
                why = "kept on failure, past its deadline" if expired else "its pytest died"
                if not kept:
                    self._report(
                        f"stale run {record.run_id} ({why}): terminated {_count(done.ended)}"
                        + _detail(done.ended, {})
                        + _not_ended(done)
                    )
                elif done.failed:
                    self._report(f"stale run {record.run_id}:" + _not_ended(done)[1:])
                if kept or done.failed:  # a kept sandbox's deadline is ahead, or a retry is due
                    continue
            elif record.backend != "local":
                continue  # another backend's run: leave it for a run that can reach it
            if record.backend == "local":
                self._remove_snapshots(record.run_id)
            forget_run(self.runs, record.run_id)
        self.swept.extend(swept)
        return swept

    # -- telling the user ------------------------------------------------------------------

    def _report(self, line: str) -> None:
        with self._reports_lock:
            self._reports.append(line)

    def take_reports(self) -> list[str]:
        """What the termination layers did since the last call (one line each)."""
        with self._reports_lock:
            lines, self._reports = self._reports, []
        return lines

    def close(self) -> None:
        self.drain()
        if self._ender is not None:
            self._ender.shutdown(wait=False)
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.close()


def _first(exc: BaseException) -> str:
    """An error's first line, with its type."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def _not_ended(swept: Swept) -> str:
    """``; could not end 1 sandbox: sb-1 (...)`` (after retrying), or nothing."""
    if not swept.failed:
        return ""
    return (
        f"; could not end {_count(list(swept.failed))} (after retrying): {swept.failures()}; "
        "a later run's stale sweep tries again, and Modal's idle timeout ends them once the "
        "heartbeats have stopped"
    )


def _count(ids: list[str]) -> str:
    return f"{len(ids)} sandbox" + ("" if len(ids) == 1 else "es")


def _detail(ids: list[str], live: Mapping[str, Mapping[str, Any]], limit: int = 8) -> str:
    """``: sb-1 (shared), sb-2 (test_a.py::test_x)`` — which sandboxes, and whose."""
    if not ids:
        return ""
    parts = []
    for sid in ids[:limit]:
        entry = live.get(sid, {})
        whose = "shared" if entry.get("share") == "run" else entry.get("test", "")
        parts.append(f"{sid} ({whose})" if whose else sid)
    more = f", and {len(ids) - limit} more" if len(ids) > limit else ""
    return ": " + ", ".join(parts) + more
