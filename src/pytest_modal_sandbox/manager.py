"""One process's view of a run's sandboxes: start, share, record, finish, sweep — pytest-free.

Every pytest process (the controller, each xdist worker, or the only process) has one
``SandboxManager``.  Workers create sandboxes and report what they did; the controller (or the
only process) owns the run lock and the ledger and runs the sweeps.  Shared (``share="run"``)
sandboxes are claimed by a deterministic name under a file lock, attached to by the others, and
terminated only by the run's owner.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from . import daemons
from .backends import Backend, NameTaken, make_backend
from .errors import SandboxError
from .launch import launch
from .lifecycle import (
    RUN_TAG,
    SHARE_TAG,
    WORKER_TAG,
    Ledger,
    RunLock,
    RunRecord,
    forget_run,
    run_tags,
    runs_dir,
    stale_runs,
    sweep,
)
from .sandbox import Sandbox
from .spec import SandboxSpec

__all__ = ["Event", "SandboxManager"]

Role = Literal["standalone", "controller", "worker"]
Share = Literal["function", "worker", "run"]


@dataclass(frozen=True)
class Event:
    """Something that happened to a sandbox, carried to the controller on test reports."""

    kind: Literal["created", "terminated", "kept"]
    sandbox_id: str
    worker: str
    share: str = "function"
    test: str = ""
    t: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.sandbox_id,
            "worker": self.worker,
            "share": self.share,
            "test": self.test,
            "t": self.t,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(d["kind"], d["id"], d["worker"], d.get("share", ""), d.get("test", ""), d["t"])


class SandboxManager:
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
        self._events: list[Event] = []
        self._events_lock = threading.Lock()
        self.sandboxes: list[Sandbox] = []  # every sandbox this process started or attached
        self.swept: list[str] = []
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
        """Release the run lock and forget the run - unless it kept a sandbox on failure: the
        record stays, so a later run's stale sweep ends that sandbox after its deadline."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None
            if self.backend_name == "emulator" or not self.kept_ids():
                forget_run(self.runs, self.run_id)  # the emulator's sandboxes end with it

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

    def _event(
        self,
        kind: Literal["created", "terminated", "kept"],
        sandbox: Sandbox,
        share: str,
        test: str,
    ) -> None:
        event = Event(kind, sandbox.id, self.worker, share, test)
        with self._events_lock:
            self._events.append(event)
        # the local fast path: the ledger file, written at once by whoever acts
        with contextlib.suppress(OSError):
            self.ledger.record(kind, sandbox.id, worker=self.worker, share=share, test=test)

    def drain_events(self) -> list[Event]:
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def record_remote(self, events: list[Event]) -> None:
        """Controller: events that arrived on a worker's report."""
        for e in events:
            with contextlib.suppress(OSError):
                self.ledger.record(
                    e.kind, e.sandbox_id, worker=e.worker, share=e.share, test=e.test
                )

    # -- starting and finishing ---------------------------------------------------------------

    def tags(self, spec: SandboxSpec, test: str, share: str) -> dict[str, str]:
        return run_tags(self.run_id, self.worker, test=test, spec_hash=spec.spec_hash, share=share)

    def start(
        self,
        spec: SandboxSpec,
        *,
        test: str,
        share: Share = "function",
        key: str = "",
        on_created: Callable[[Sandbox], None] | None = None,
    ) -> Sandbox:
        """A ready sandbox; ``share="run"`` returns the run's one sandbox for ``key``."""
        made: list[Sandbox] = []

        def created(sb: Sandbox) -> None:
            made.append(sb)
            self._event("created", sb, share, test)
            if on_created is not None:
                on_created(sb)

        try:
            if share == "run":
                sandbox = self._shared(spec, test=test, key=key, created=created)
            else:
                sandbox = launch(
                    self.backend,
                    spec,
                    tags=self.tags(spec, test, share),
                    log_lines=self.log_lines,
                    on_created=created,
                )
        except BaseException:
            for sb in made:  # launch terminated it on the way out: the ledger must know
                self._event("terminated", sb, share, test)
            raise
        self.sandboxes.append(sandbox)
        return sandbox

    def shared_name(self, key: str, spec: SandboxSpec) -> str:
        digest = hashlib.sha256(f"{key}|{spec.spec_hash}".encode()).hexdigest()[:10]
        return f"pms-{self.run_id}-{digest}"

    def _shared(
        self, spec: SandboxSpec, *, test: str, key: str, created: Callable[[Sandbox], None]
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

    def finish(self, sandbox: Sandbox, *, share: Share, test: str, report: Any = None) -> None:
        """Fixture teardown: terminate without waiting — unless the run owns it and we don't."""
        if not self.terminates(share):
            with contextlib.suppress(Exception):
                sandbox._impl.release()
            return
        self.terminate(sandbox, share=share, test=test)

    def terminate(self, sandbox: Sandbox, *, share: str, test: str) -> None:
        try:
            sandbox.terminate()
        finally:
            self._event("terminated", sandbox, share, test)
            with contextlib.suppress(Exception):
                sandbox._impl.release()

    def kept(self, sandbox: Sandbox, *, share: str, test: str) -> None:
        """A sandbox is kept alive on purpose (keep-on-failure, already untied and tagged
        ``KEEP_TAG``): this run's sweeps leave it alone, later runs end it after the tag's time."""
        self._event("kept", sandbox, share, test)

    def kept_ids(self) -> set[str]:
        """Sandboxes of this run kept on failure (from every process, through the ledger)."""
        return {str(e.get("id")) for e in self.ledger.entries() if e.get("event") == "kept"}

    def _split_kept(self, run_id: str) -> tuple[list[str], list[str], bool]:
        """A stale run's sandboxes: (kept with a deadline still ahead, the others, whether any
        of the others was kept on failure and is past its deadline)."""
        from .lifecycle import KEEP_TAG

        kept: list[str] = []
        others: list[str] = []
        expired = False
        with contextlib.suppress(SandboxError, OSError):
            for info in self.backend.list({RUN_TAG: run_id}):
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
            with contextlib.suppress(Exception):
                ids += [
                    info.id
                    for info in self.backend.list({RUN_TAG: self.run_id, WORKER_TAG: worker})
                    if info.tags.get(SHARE_TAG) != "run"
                ]
            done = sweep(self.backend.terminate, ids)
            for sid in done:
                self.ledger.record("terminated", sid, worker=worker, share="crash")
            self.swept.extend(done)
            self._report(
                f"worker {worker} crashed: terminated {_count(done)} it had started"
                + _detail(done, live)
            )

        thread = threading.Thread(target=work, name=f"pms-down-{worker}", daemon=True)
        thread.start()
        self._pending.append(thread)

    def sweep_run(self, keep: Callable[[str], bool] = lambda _id: False) -> list[str]:
        """Controller/only process, after every worker is gone: end all of this run's sandboxes
        (the ledger's and everything the backend lists under the run's tag)."""
        for thread in self._pending:
            thread.join(timeout=30)
        live = self.ledger.live()
        asked = {e.get("id") for e in self.ledger.entries() if e.get("event") == "terminated"}
        ids = list(live)
        running: list[str] | None = None  # what the backend lists; None if it could not
        if ids or self.crashed_workers or self.backend_started:
            with contextlib.suppress(Exception):
                running = [info.id for info in self.backend.list({RUN_TAG: self.run_id})]
                ids += running
        kept = self.kept_ids()  # kept on failure: ended by a later run, after its deadline
        ids = [i for i in dict.fromkeys(ids) if not keep(i) and i not in kept]
        if not ids:
            return []
        done = sweep(self.backend.terminate, ids)
        for sid in done:
            with contextlib.suppress(OSError):
                self.ledger.record("terminated", sid, worker="controller", share="sweep")
        self.swept.extend(done)
        # news: what was still running and nobody had asked to end (a finalizer's
        # terminate does not wait, so its sandbox may still be listed for a moment)
        ended = [i for i in done if (running is None or i in running) and i not in asked]
        if ended:
            self._report(
                f"end of run: terminated {_count(ended)} still running" + _detail(ended, live)
            )
        return done

    def sweep_stale_runs(self) -> list[str]:
        """Start of a run: end the sandboxes of earlier runs that died without cleaning up."""
        swept: list[str] = []
        for record in stale_runs(self.runs):
            if record.run_id == self.run_id:
                continue
            if record.backend == self.backend_name:
                kept, others, expired = self._split_kept(record.run_id)
                done = sweep(self.backend.terminate, others)
                swept += done
                if kept:  # a sandbox kept on failure, deadline ahead: keep the record too
                    continue
                why = "kept on failure, past its deadline" if expired else "its pytest died"
                self._report(
                    f"stale run {record.run_id} ({why}): terminated {_count(done)}"
                    + _detail(done, {})
                )
            elif record.backend != "local":
                continue  # another backend's run: leave it for a run that can reach it
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
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.close()


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
