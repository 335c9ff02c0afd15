"""Fault-injection harness: inner pytest runs in their own process group, and the backend asked
directly which of a run's sandboxes still run.

Shared by ``tests/faults`` (behaviour: zero sandboxes left, the report says what happened),
``tests/live`` (the same scenarios against a real Modal workspace) and ``bench/bench_faults.py``
(the time from the fault until the backend no longer lists the sandbox).  It lives in
``tests/``, which ``tests/conftest.py`` puts on ``sys.path``.

Backends:

* ``local``: the inner run uses ``--modal-sandbox=local``; "running" is what the local runtime's
  own records under ``<state dir>/local`` say.
* ``emulator``: the inner run uses ``--modal-sandbox=modal`` with ``MODAL_*`` pointing at an
  :class:`EmulatorProcess` started here, so the sandboxes outlive the inner run and only the
  plugin's layers (not the emulator's shutdown) can end them; "running" is
  ``modal.Sandbox.list(app_id=..., tags={"pms-run": id})`` asked of that emulator.
* ``modal``: the same, against whatever Modal the environment names (``MODAL_*`` or
  ``~/.modal.toml``): the real cloud for ``tests/live``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import inner_runs
from proctable import children_of, group_members, processes_mentioning

RUN_TAG = "pms-run"
APP = "pytest-modal-sandbox"

# The inner runs' conftest: notes what happens (as JSON lines in $FAULT_DIR) and injects faults.
CONFTEST = r'''
import json, os, signal, time

import pytest

FAULT_DIR = os.environ["FAULT_DIR"]
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def note(kind, **data):
    data.update(t=time.time(), pid=os.getpid(), worker=WORKER)
    with open(os.path.join(FAULT_DIR, kind + ".jsonl"), "a") as f:
        f.write(json.dumps(data) + "\n")


def first(name):
    """True for the first caller in the whole run (an O_EXCL marker file)."""
    try:
        os.close(os.open(os.path.join(FAULT_DIR, name + ".once"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def hang(where):
    """Tell the outer test we got here, then wait for its signal."""
    note("reached", where=where)
    time.sleep(float(os.environ.get("FAULT_HANG", "120")))


def pytest_sessionstart(session):
    from pytest_modal_sandbox.fixtures import PROVIDER_KEY

    ours = session.config.stash.get(PROVIDER_KEY, None)
    if ours is not None:
        note("run", run_id=ours.run.run_id, role=ours.role)


def pytest_modal_sandbox_created(sandbox):
    note("created", id=sandbox.id)
    action = os.environ.get("FAULT_ON_CREATED", "")
    if action == "raise":
        raise RuntimeError("injected fault: the created hook raised")
    if action == "kill-once" and first("kill-on-created"):
        note("fault", what="worker SIGKILLed itself right after create", id=sandbox.id)
        os.kill(os.getpid(), signal.SIGKILL)
'''


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """``check()``'s first truthy value; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- asking the backend itself ----------------------------------------------------------------


class LocalLister:
    """The local runtime's own records: which sandboxes of a run are still running."""

    name = "local"
    interval = 0.0  # no polling rate to respect: the runtime's own files

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "local"

    def running(
        self, run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[str]:
        from pytest_modal_sandbox.runtime import LocalRuntime

        if not self.root.exists():
            return []
        want = dict(tags or {})
        if run_id is not None:
            want[RUN_TAG] = run_id
        return [sb.id for sb in LocalRuntime(self.root).list(tags=want)]

    def terminate(self, ids: Sequence[str]) -> None:
        from pytest_modal_sandbox.runtime import LocalRuntime

        for sid in ids:
            LocalRuntime(self.root).get(sid).terminate(wait=True)

    def close(self) -> None:
        pass


class ModalLister:
    """``modal.Sandbox.list`` with the real client: against ``url`` with ``token`` (an emulator),
    or, without them, against the Modal the environment configures (as any modal program).
    ``interval``: the least time between two listings while waiting (be gentle with a real
    control plane)."""

    def __init__(
        self,
        url: str | None = None,
        token: tuple[str, str] | None = None,
        *,
        app: str = APP,
        environment: str | None = None,
        interval: float = 0.0,
    ) -> None:
        import modal
        from modal_proto import api_pb2

        self._modal = modal
        self.interval = interval
        self._own = url is not None
        if url is not None:
            self.client = modal.Client(url, api_pb2.CLIENT_TYPE_CLIENT, token)
            self.client.__enter__()
        else:
            self.client = modal.Client.from_env()
        self.app_id = modal.App.lookup(
            app, create_if_missing=True, client=self.client, environment_name=environment
        ).app_id

    def running(
        self, run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[str]:
        want = dict(tags or {})
        if run_id is not None:
            want[RUN_TAG] = run_id
        found = self._modal.Sandbox.list(app_id=self.app_id, tags=want, client=self.client)
        return [sb.object_id for sb in found]

    def terminate(self, ids: Sequence[str]) -> None:
        for sid in ids:
            self._modal.Sandbox.from_id(sid, client=self.client).terminate()

    def close(self) -> None:
        if self._own:  # the environment's client is modal's to keep
            with contextlib.suppress(Exception):
                self.client.__exit__(None, None, None)


# -- the inner run ------------------------------------------------------------------------------


@dataclass
class World:
    """Where inner runs happen and how to reach their backend.

    ``backend`` is ``local`` or ``emulator`` (see the module docstring); ``env`` is what every
    inner run gets on top of ours.
    """

    backend: str
    root: Path
    lister: Any
    env: dict[str, str] = field(default_factory=dict)
    ini: dict[str, str] = field(default_factory=dict)
    runs: list[InnerRun] = field(default_factory=list)
    emulator: Any = None  # the EmulatorProcess of an emulator world (its stats, end_sandbox)
    zygote: Any = None  # a zygote.Zygote to fork inner runs and CLI calls from (else: fresh)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def plugin_backend(self) -> str:
        """The inner runs' ``--modal-sandbox=``: an emulator is reached as ``modal``."""
        return "local" if self.backend == "local" else "modal"


class InnerRun:
    """``python -m pytest`` in a fresh directory, as the leader of its own process group."""

    def __init__(
        self,
        world: World,
        name: str,
        files: Mapping[str, str],
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ini: Mapping[str, str] | None = None,
        backend_flag: str | None = None,
    ) -> None:
        self.world = world
        world.runs.append(self)
        self.dir = world.root / name
        self.dir.mkdir(parents=True)
        self.fault_dir = self.dir / "fault"
        self.fault_dir.mkdir()
        settings = {"addopts": inner_runs.ADDOPTS, **world.ini, **(ini or {})}
        (self.dir / "pytest.ini").write_text(
            "[pytest]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        (self.dir / "conftest.py").write_text(CONFTEST)
        for fname, text in files.items():
            (self.dir / fname).write_text(text)
        flag = backend_flag or f"--modal-sandbox={world.plugin_backend}"
        self.argv = [sys.executable, "-m", "pytest", flag, "-rA", "-v", *args]
        self.env = {
            **os.environ,
            "PYTEST_MODAL_SANDBOX_STATE_DIR": str(world.state_dir),
            "FAULT_DIR": str(self.fault_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTEST_ADDOPTS": "",
            **world.env,
            **(env or {}),
        }
        self.env.pop("PYTEST_XDIST_WORKER", None)
        self.env.pop("PYTEST_XDIST_TESTRUNUID", None)
        self.out_path = self.dir / "output.txt"
        self.proc: Any = None  # a subprocess.Popen, or a zygote.ForkedProcess
        self.t_start = 0.0

    def start(self) -> InnerRun:
        self.t_start = time.time()
        with open(self.out_path, "wb") as out:
            if self.world.zygote is not None:  # its own session too
                with open(os.devnull, "rb") as devnull:
                    self.proc = self.world.zygote.spawn(
                        "pytest",
                        self.argv[3:],
                        cwd=self.dir,
                        env=self.env,
                        stdin=devnull.fileno(),
                        stdout=out.fileno(),
                        stderr=out.fileno(),
                    )
                return self
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: we signal the group
            )
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def notes(self, kind: str) -> list[dict[str, Any]]:
        return _read_jsonl(self.fault_dir / f"{kind}.jsonl")

    def wait_note(self, kind: str, timeout: float = 60.0, count: int = 1) -> dict[str, Any]:
        """The ``count``-th note of ``kind`` (the run must still be going)."""

        def check() -> dict[str, Any] | None:
            found = self.notes(kind)
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the inner run exited ({self.proc.returncode}) before it noted {kind!r}:\n"
                    + self.output()
                )
            return None

        note: dict[str, Any] = wait_until(check, timeout, f"the inner run to note {kind!r}")
        return note

    @property
    def run_id(self) -> str:
        """The run id the controller (or only process) minted."""
        note = self.wait_note("run")
        for n in self.notes("run"):
            if n["role"] != "worker":
                return str(n["run_id"])
        return str(note["run_id"])

    def group_pids(self) -> list[int]:
        """Live processes in the run's process group (the controller and its workers)."""
        return group_members(self.pgid)

    def signal_group(self, sig: int) -> float:
        """Send ``sig`` to the whole process group; returns when it was sent."""
        t = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)
        return t

    def wait(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the inner run did not end within {timeout:g}s:\n{self.output()}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.proc.wait()
        # workers may outlive the leader for a moment
        for pid in self.group_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def expect(self, timeout: float = 120.0, **outcomes: int) -> pytest.RunResult:
        """Wait for the run to end and assert its ``outcomes`` (as pytester's
        ``assert_outcomes``); the failure shows the run's output.  Returns the result."""
        rc = self.wait(timeout)
        result = pytest.RunResult(rc, self.output().splitlines(), [], time.time() - self.t_start)
        try:
            result.assert_outcomes(**outcomes)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- output of the inner run {self.dir.name} ---\n{self.output()[-8000:]}"
            ) from None
        return result

    def __enter__(self) -> InnerRun:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_file(
    world: World, name: str, tests: str, *args: str, timeout: float = 300.0, **outcomes: int
) -> tuple[InnerRun, pytest.RunResult]:
    """``tests`` (a test file's text) run to its end as ``test_<name>.py`` with ``args``
    (default: no xdist); asserts ``outcomes`` (default: ``passed=1``)."""
    run = InnerRun(world, name, {f"test_{name}.py": tests}, args=list(args or ["-p", "no:xdist"]))
    with run:
        return run, run.expect(timeout, **(outcomes or {"passed": 1}))


def none_running(world: World, run_id: str, timeout: float = 15.0) -> None:
    """Assert that the backend lists no sandbox of ``run_id`` (within ``timeout``)."""
    left: list[str] = []

    def check() -> bool:
        left[:] = world.lister.running(run_id)
        return not left

    try:
        wait_until(
            check,
            timeout,
            f"run {run_id}'s sandboxes to end",
            interval=max(0.05, world.lister.interval),
        )
    except AssertionError:
        raise AssertionError(f"{world.backend}: run {run_id} left {left} running") from None


def clean_up(world: World, timeout: float = 15.0) -> list[str]:
    """After a test: end the inner runs, then anything of theirs still running (so one failure
    does not leak into the next test); returns what had to be ended that way (ideally none).
    ``timeout``: how long the backend may take to stop listing what the runs ended."""
    for run in world.runs:
        run.kill()
    leaked: list[str] = []
    for run in world.runs:
        for note in run.notes("run"):
            try:
                none_running(world, note["run_id"], timeout)
            except AssertionError:
                left = world.lister.running(note["run_id"])
                world.lister.terminate(left)
                leaked += left
    return leaked


def time_to_gone(
    lister: Any, sandbox_ids: Sequence[str], t_fault: float, timeout: float = 60.0
) -> float:
    """Seconds from ``t_fault`` until the backend lists none of ``sandbox_ids`` any more."""
    ids = set(sandbox_ids)

    def gone() -> bool:
        return not ids & set(lister.running())

    interval = max(0.01, lister.interval)
    wait_until(gone, timeout, f"sandboxes {sorted(ids)} to be gone", interval=interval)
    return time.time() - t_fault


@contextlib.contextmanager
def emulator_world(root: Path, zygote: Any = None, **emulator_args: Any) -> Iterator[World]:
    """An emulator of our own (its state under ``root``) and a world pointing inner runs at it
    (forked from ``zygote``, if given)."""
    from pytest_modal_sandbox.emulator import EmulatorProcess

    token = ("ak-faults", "as-faults")
    emu = EmulatorProcess(
        token_id=token[0], token_secret=token[1], state_dir=root / "emulator", **emulator_args
    ).start()
    lister = None
    try:
        lister = ModalLister(emu.url, token)
        yield World("emulator", root, lister, env=emu.client_env(), emulator=emu, zygote=zygote)
    finally:
        if lister is not None:
            lister.close()
        emu.stop()


def local_world(root: Path, zygote: Any = None) -> World:
    world = World("local", root, None, zygote=zygote)
    world.lister = LocalLister(world.state_dir)
    return world


# -- scenarios: one fault each, shared by the tests and bench/bench_faults.py -------------------

SIGNAL_TESTS = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture
from conftest import hang

shared = sandbox_fixture(scope="session", share="run")


@pytest.mark.sandbox(daemons=[Daemon("slow", "sleep 600", ready=Probe.log("never", timeout=120))])
def test_setup(sandbox):
    pass


def test_call(sandbox):
    hang("call")


@pytest.fixture
def slow_teardown(sandbox):
    yield sandbox
    hang("teardown")


def test_teardown(slow_teardown):
    pass


def test_shared_call(shared, sandbox):
    hang("call")
"""


def hanging_run(world: World, name: str, test: str = "test_call", **kw: Any) -> InnerRun:
    """A run, started, that will stop in the call of ``test`` (of ``SIGNAL_TESTS``) holding its
    sandboxes until it is signalled; wait for its ``reached`` note to know it got there."""
    args = [f"test_faults.py::{test}", "-p", "no:xdist"]
    return InnerRun(world, name, {"test_faults.py": SIGNAL_TESTS}, args=args, **kw).start()


DEADMAN_INI = {"modal_sandbox_lease": "1", "modal_sandbox_idle_timeout": "2"}


@dataclass
class Outcome:
    """What a scenario did: the run, the sandboxes the fault hit, and when they were gone."""

    run: InnerRun
    ids: list[str]
    t_fault: float
    gone_after: float  # seconds from the fault until the backend listed none of ``ids``
    returncode: int
    output: str
    extra: dict[str, Any] = field(default_factory=dict)


def signal_fault(
    world: World,
    where: str,
    sig: int,
    *,
    workers: int = 0,
    test: str | None = None,
    ini: Mapping[str, str] | None = None,
    name: str | None = None,
    gone_timeout: float = 60.0,
) -> Outcome:
    """Run ``test_<where>`` (or ``test``), send ``sig`` to the process group once it is in its
    ``where`` phase (setup: right after create), and time the sandboxes' end."""
    dist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    test = test or f"test_{where}"
    run = InnerRun(
        world,
        name or f"{where}-{signal.Signals(sig).name}-n{workers}-{len(world.runs)}",
        {"test_faults.py": SIGNAL_TESTS},
        args=[f"test_faults.py::{test}", *dist],
        ini=ini,
    )
    with run:
        run.wait_note("created" if where == "setup" else "reached", timeout=90)
        ids = [n["id"] for n in run.notes("created")]
        t = run.signal_group(sig)
        gone = time_to_gone(world.lister, ids, t, timeout=gone_timeout)
        rc = run.wait(90)
    return Outcome(run, ids, t, gone, rc, run.output())


CRASH_TESTS = r"""
import os, signal, time

import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture
from pytest_modal_sandbox.session import session_of
from conftest import FAULT_DIR, hang, note

shared = sandbox_fixture(
    scope="session", share="run", daemons=[Daemon("d", "sleep 600", ready=Probe.exec("true"))]
)


def released():
    return os.path.exists(os.path.join(FAULT_DIR, "release"))


def test_victim(sandbox):
    note("fault", what="worker SIGKILLed itself during a test", id=sandbox.id)
    os.kill(os.getpid(), signal.SIGKILL)


def test_bystander(sandbox):
    note("reached", where="bystander")
    deadline = time.monotonic() + 120
    while not released() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("n", range(6))
def test_uses_shared(shared, request, n):
    run = session_of(request.config).run
    running = run.backend.list({"pms-run": run.run_id, "pms-share": "run"})
    note("used", id=shared.id, running=[i.id for i in running])
    assert shared.exec("true").returncode == 0
    assert [i.id for i in running] == [shared.id]


def test_plain(sandbox):
    pass


@pytest.mark.sandbox(daemons=[Daemon("crasher", "echo crashing; exit 3", ready=Probe.tcp(8000))])
def test_daemon_crashes(sandbox):
    pass


@pytest.mark.sandbox(daemons=[Daemon("slow", "sleep 600", ready=Probe.tcp(8000, timeout=1.0))])
def test_never_ready(sandbox):
    pass
"""


def _crash_run(world: World, name: str, args: Sequence[str], **kw: Any) -> InnerRun:
    return InnerRun(world, name, {"test_crash.py": CRASH_TESTS}, args=list(args), **kw)


def worker_killed_in_test(world: World, name: str = "") -> Outcome:
    """-n 2: one worker SIGKILLs itself in a test's call; timed while the run goes on."""
    run = _crash_run(
        world,
        name or f"victim-{len(world.runs)}",
        ["test_crash.py::test_victim", "test_crash.py::test_bystander", "-n", "2"],
    )
    with run:
        fault = run.wait_note("fault", timeout=90)
        gone = time_to_gone(world.lister, [fault["id"]], fault["t"])
        (run.fault_dir / "release").touch()
        rc = run.wait(90)
    return Outcome(run, [fault["id"]], fault["t"], gone, rc, run.output())


def worker_killed_in_shared_setup(world: World, name: str = "") -> Outcome:
    """-n 2: the first worker to create the run's shared sandbox SIGKILLs itself right after
    the create, before it is ready; another process must replace it."""
    run = _crash_run(
        world,
        name or f"shared-victim-{len(world.runs)}",
        ["test_crash.py::test_uses_shared", "-n", "2"],
        env={"FAULT_ON_CREATED": "kill-once"},
    )
    with run:
        fault = run.wait_note("fault", timeout=90)
        gone = time_to_gone(world.lister, [fault["id"]], fault["t"])
        rc = run.wait(90)
    return Outcome(run, [fault["id"]], fault["t"], gone, rc, run.output())


def start_failure(world: World, test: str, env: Mapping[str, str] | None = None) -> Outcome:
    """A sandbox whose start fails (``test``): timed from its creation to its end."""
    run = _crash_run(
        world, f"{test}-{len(world.runs)}", [f"test_crash.py::{test}", "-p", "no:xdist"], env=env
    )
    with run:
        created = run.wait_note("created", timeout=90)
        gone = time_to_gone(world.lister, [created["id"]], created["t"])
        rc = run.wait(90)
    return Outcome(run, [created["id"]], created["t"], gone, rc, run.output())


AHEAD = 3
AHEAD_TESTS = r"""
import json, os, signal, time

import pytest
from pytest_modal_sandbox import Daemon, Probe
from conftest import FAULT_DIR, WORKER, first, hang, note


def mine_created():
    try:
        with open(os.path.join(FAULT_DIR, "created.jsonl")) as f:
            notes = [json.loads(line) for line in f]
    except FileNotFoundError:
        return []
    return [n["id"] for n in notes if n["worker"] == WORKER]


def wait_for_ahead(count):
    deadline = time.monotonic() + 90
    while len(mine_created()) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_1_interrupted(sandbox):
    wait_for_ahead(1 + AHEAD)  # its own and the next tests' (started ahead)
    hang("call")


def test_1_killed(sandbox):
    wait_for_ahead(1 + AHEAD)
    if not first("killed"):  # --dist loadfile gives a crashed test to the next worker again
        return
    note("fault", what="worker SIGKILLed itself with sandboxes started ahead", ids=mine_created())
    os.kill(os.getpid(), signal.SIGKILL)


def test_2(sandbox):
    pass


def test_3(sandbox):
    pass


@pytest.mark.sandbox(daemons=[Daemon("slow", "sleep 600", ready=Probe.log("never", timeout=8))])
def test_4_not_ready_yet(sandbox):
    pass


def test_5(sandbox):
    pass
""".replace("AHEAD)", f"{AHEAD})")

BYSTANDER = r"""
import os, time
from conftest import FAULT_DIR, note


def test_bystander(sandbox):
    note("reached", where="bystander")
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(FAULT_DIR, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def ctrl_c_with_sandboxes_ahead(world: World) -> Outcome:
    """Ctrl-C while a test runs and the next tests' sandboxes were started ahead (ready, and
    one still waiting for readiness); timed until none of them is listed."""
    run = InnerRun(
        world,
        f"ahead-ctrl-c-{len(world.runs)}",
        {"test_ahead.py": AHEAD_TESTS},
        args=["-k", "not killed", "-p", "no:xdist"],
        ini={"modal_sandbox_ahead": str(AHEAD)},
    )
    with run:
        run.wait_note("reached", timeout=90)
        ids = [n["id"] for n in run.notes("created")]
        t = run.signal_group(signal.SIGINT)
        gone = time_to_gone(world.lister, ids, t)
        rc = run.wait(90)
    return Outcome(run, ids, t, gone, rc, run.output())


def worker_killed_with_sandboxes_ahead(world: World) -> Outcome:
    """-n 2 --dist loadfile: a worker SIGKILLs itself in a test while the sandboxes of its next
    tests were started ahead; timed while the run goes on (the other worker waits)."""
    run = InnerRun(
        world,
        f"ahead-kill-{len(world.runs)}",
        {"test_ahead.py": AHEAD_TESTS, "test_other.py": BYSTANDER},
        args=["-k", "not interrupted", "-n", "2", "--dist", "loadfile"],
        ini={"modal_sandbox_ahead": str(AHEAD)},
    )
    with run:
        fault = run.wait_note("fault", timeout=90)
        gone = time_to_gone(world.lister, fault["ids"], fault["t"])
        (run.fault_dir / "release").touch()
        rc = run.wait(120)
    return Outcome(run, fault["ids"], fault["t"], gone, rc, run.output())


def cli(
    world: World,
    *args: str,
    pytest_option: bool = False,
    answer: str | None = None,
    cwd: Path | None = None,
) -> tuple[int, str]:
    """``python -m pytest_modal_sandbox ARGS`` (or ``python -m pytest ARGS`` with
    ``pytest_option``) against the world's backend; with ``answer``, stdin is a terminal that
    types it."""
    import pty

    if pytest_option:
        module, args = "pytest", (*inner_runs.ADDOPTS.split(), *args)
    else:
        module = "pytest_modal_sandbox"
    env = {
        **os.environ,
        "PYTEST_MODAL_SANDBOX_STATE_DIR": str(world.state_dir),
        "PYTEST_ADDOPTS": "",
        **world.env,
    }
    master = slave = None
    stdin: Any = subprocess.DEVNULL
    if answer is not None:
        master, slave = pty.openpty()
        stdin = slave
    try:
        if world.zygote is not None:
            read_end, write_end = os.pipe()
            with open(os.devnull, "rb") as devnull:
                try:
                    proc = world.zygote.spawn(
                        module,
                        args,
                        cwd=cwd or world.root,
                        env=env,
                        stdin=devnull.fileno() if slave is None else slave,
                        stdout=write_end,
                        stderr=write_end,
                    )
                finally:
                    os.close(write_end)
            if master is not None:
                os.write(master, answer.encode() + b"\n")  # type: ignore[union-attr]
            with open(read_end, "rb") as output:
                out = _read_all(output, 60)
            proc.wait(60)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=cwd or world.root,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if master is not None:
                os.write(master, answer.encode() + b"\n")  # type: ignore[union-attr]
            out, _ = proc.communicate(timeout=60)
    finally:
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)
    return proc.returncode, out.decode(errors="replace")


def _read_all(stream: Any, timeout: float) -> bytes:
    """Everything until EOF, or AssertionError after ``timeout`` seconds."""
    import select

    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no end of output within {timeout:g}s")
        data = os.read(stream.fileno(), 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def backend_args(world: World) -> list[str]:
    """The CLI's ``--backend`` for this world (the emulator is reached as ``modal``)."""
    return ["--backend", world.plugin_backend]


def stale_run_swept_by_next(world: World) -> Outcome:
    """A run's pytest processes are all SIGKILLed (default lease: on the Modal path its
    sandboxes outlive it); the next run's start sweeps it.  Timed from the next run's start."""
    dead = InnerRun(
        world,
        f"dead-{len(world.runs)}",
        {"test_faults.py": SIGNAL_TESTS},
        args=["test_faults.py::test_shared_call", "-p", "no:xdist"],
    )
    with dead:
        dead.wait_note("reached", timeout=90)
        dead_id = dead.run_id
        ids = [n["id"] for n in dead.notes("created")]
        dead.signal_group(signal.SIGKILL)
        dead.wait(30)
    still = world.lister.running(dead_id)
    nxt = InnerRun(world, f"next-{len(world.runs)}", {"test_x.py": "def test_x():\n    pass\n"})
    with nxt:
        t = nxt.t_start
        gone = time_to_gone(world.lister, ids, t)
        rc = nxt.wait(90)
    return Outcome(nxt, ids, t, gone, rc, nxt.output(), {"dead": dead_id, "still": still})


def own_emulator_killed(world: World) -> Outcome:
    """``--modal-sandbox=emulator`` (the run starts its own emulator, in a session of its own):
    every pytest process SIGKILLed; timed until no emulator, keeper or sandbox process of the
    run is left (``ids`` holds the emulator's pid)."""
    run = InnerRun(
        world,
        f"own-emulator-{len(world.runs)}",
        {"test_faults.py": SIGNAL_TESTS},
        args=["test_faults.py::test_call", "-p", "no:xdist"],
        backend_flag="--modal-sandbox=emulator",
    )
    with run:
        run.wait_note("reached", timeout=90)
        assert run.proc is not None
        emulators = [
            pid
            for pid, _ in processes_mentioning("pytest_modal_sandbox.emulator")
            if pid in children_of(run.proc.pid)
        ]
        assert len(emulators) == 1, emulators
        t = run.signal_group(signal.SIGKILL)
        wait_until(
            lambda: not processes_mentioning(str(world.state_dir)),
            30,
            "the emulator and its sandboxes to end",
            interval=0.01,
        )
        gone = time.time() - t
        rc = run.wait(30)
    return Outcome(run, [str(emulators[0])], t, gone, rc, run.output())
