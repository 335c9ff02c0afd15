"""Sandboxes started ahead (runtime/warm.py): once two sandboxes in a row had the same shape,
the keeper server's spare starts one shaped like them, and the next of that shape is handed
it.  It must be the sandbox a cold start makes, end as its command does, never serve a launch
of another shape, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import processes_mentioning, spawn_python

from hostchanges import host_changes
from proctable import children_of
from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes are started ahead as root")


@pytest.fixture(autouse=True)
def _host_view_stays_put() -> Iterator[None]:
    with host_changes(exclusive=False):
        yield


def _warm_inits(state: Path) -> list[int]:
    """PID 1 of each sandbox started ahead in ``state`` whose trampoline runs."""
    inits = []
    for pid, cmdline in processes_mentioning(str(state)):
        if "--hostname pms-warm" in cmdline:
            inits += [init for init in children_of(pid) if children_of(init)]
    return inits


def _prime(rt: LocalRuntime, config: SandboxConfig) -> None:
    """Start and end two sandboxes of ``config``'s shape: then one is started ahead."""
    for _ in range(2):
        rt.create(config).terminate(wait=True)


def _wait_warm(state: Path, count: int = 1) -> list[int]:
    deadline = time.monotonic() + 60
    while len(inits := _warm_inits(state)) < count:
        assert time.monotonic() < deadline, "no sandbox was started ahead"
        time.sleep(0.02)
    return inits


ENTRYPOINT = ["sh", "-c", "echo started; echo oops >&2; exec sleep 60"]
PROBE = (
    "hostname; tail -n 1 /etc/hosts; pwd; "
    "tr '\\0' ' ' < /proc/2/cmdline; echo; "
    "tr '\\0' '\\n' < /proc/2/environ | sort; "
    "ls /proc/2/fd; cat /proc/2/status | grep -E '^(Uid|Gid|Cap|NoNewPrivs|Seccomp)'"
)


def test_a_sandbox_started_ahead_is_the_one_a_cold_start_makes(
    rt: LocalRuntime, state_dir: Path
) -> None:
    config = SandboxConfig(
        env={"GREETING": "hello world", "EMPTY": "", "ODD": "a=b\nc d", "ACCENT": "é"},
        command=ENTRYPOINT,
    )
    rt.create(config).terminate(wait=True)
    cold = rt.create(config)  # the second of its shape: the next is started ahead
    _wait_warm(state_dir)
    warm = rt.create(config)
    assert cold._meta["started_ahead"] is False
    assert warm._meta["started_ahead"] is True
    seen = []
    for sb in (cold, warm):
        probe = sb.exec(["sh", "-c", PROBE])
        assert probe.returncode == 0, probe.stderr
        seen.append(probe.stdout.decode().replace(sb.id.lower(), "<id>"))
    assert seen[0] == seen[1]
    assert seen[1].startswith("<id>\n127.0.1.1\t<id>\n/\nsleep 60 \n")
    assert "\nGREETING=hello world\n" in seen[1] and "\nODD=a=b\n" in seen[1]
    assert "\nPWD=/\n" in seen[1] and "\nACCENT=é\n" in seen[1]
    for sb in (cold, warm):
        sb.terminate(wait=True)
        assert (state_dir / sb.id / "stdout").read_bytes() == b"started\n"
        assert (state_dir / sb.id / "stderr").read_bytes() == b"oops\n"


@pytest.mark.parametrize(
    "command, kind, code",
    [
        (["sh", "-c", "exit 7"], "failure", 7),
        (["true"], "success", 0),
        (["no-such-command-pms"], "failure", 127),
        (["sh", "-c", "kill -9 $$"], "failure", 137),
    ],
)
def test_a_sandbox_started_ahead_ends_as_its_command_does(
    rt: LocalRuntime, state_dir: Path, command: list[str], kind: str, code: int
) -> None:
    for ahead in (False, False, True):
        if ahead:
            _wait_warm(state_dir)
        sb = rt.create(SandboxConfig(command=command))
        assert sb._meta["started_ahead"] is ahead
        status = sb.wait(30)
        assert status is not None and (status.kind, status.exitcode) == (kind, code), ahead


@pytest.mark.parametrize(
    "config",
    [
        SandboxConfig(workdir="/srv/pms-app"),  # the root's plan and bwrap's options differ
        SandboxConfig(stdin_pipe=True),  # bwrap's stdin is the creator's pipe
        SandboxConfig(command=["X=1", "sh"]),  # env would take the command for a variable
        SandboxConfig(block_network=True),  # another profile: no network stack
    ],
    ids=["workdir", "stdin_pipe", "command-with-=", "block_network"],
)
def test_a_sandbox_of_another_shape_is_not_served_ahead(
    rt: LocalRuntime, state_dir: Path, config: SandboxConfig
) -> None:
    _prime(rt, SandboxConfig())
    _wait_warm(state_dir)
    sb = rt.create(config)
    assert sb._meta["started_ahead"] is False
    if config.command is None:
        assert sb.exec(["pwd"]).stdout.decode().strip() == (config.workdir or "/")
    sb.terminate(wait=True)


def test_a_credential_named_after_the_start_ahead_stays_hidden(
    rt: LocalRuntime, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view a sandbox is started ahead with is the one planned for its template: a
    creator that would hide more (here a credential file an environment variable now names)
    does not get it."""
    where = Path(f"/srv/pms-warm-{os.getpid()}")  # not below a hidden path (/tmp is one)
    where.mkdir(parents=True)
    try:
        (where / "credentials").write_text("secret")
        first = rt.create(SandboxConfig())
        assert first.exec(["cat", f"{where}/credentials"]).stdout == b"secret"  # named by none
        first.terminate(wait=True)
        rt.create(SandboxConfig()).terminate(wait=True)
        _wait_warm(state_dir)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(where / "credentials"))
        sb = rt.create(SandboxConfig())
        assert sb._meta["started_ahead"] is False
        assert sb.exec(["cat", f"{where}/credentials"]).returncode != 0
        sb.terminate(wait=True)
    finally:
        shutil.rmtree(where)


def test_a_sandbox_started_ahead_that_died_is_not_handed_over(
    rt: LocalRuntime, state_dir: Path
) -> None:
    _prime(rt, SandboxConfig())
    (init,) = _wait_warm(state_dir)
    os.kill(init, signal.SIGKILL)
    sb = rt.create(SandboxConfig())
    assert sb._meta["started_ahead"] is False
    assert sb.exec(["true"]).returncode == 0
    sb.terminate(wait=True)


def test_nothing_of_it_shows_on_the_host_and_closing_the_runtime_ends_it(
    state_dir: Path,
) -> None:
    """Its files are on a tmpfs over the state dir in the spare's mount namespace only, its
    output files unnamed until it is handed over; ``close()`` ends it."""
    rt = LocalRuntime(state_dir)
    _prime(rt, SandboxConfig())
    _wait_warm(state_dir)
    ids = sorted(sb.id for sb in rt.list(include_finished=True))
    assert sorted(p.name for p in state_dir.iterdir()) == ids
    assert f" {state_dir} " not in Path("/proc/self/mountinfo").read_text()
    rt.close()
    assert processes_mentioning(str(state_dir)) == []
    assert sorted(p.name for p in state_dir.iterdir()) == ids


@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_sandboxes_started_ahead_end_with_their_creator(state_dir: Path, ending: str) -> None:
    """Every process of a sandbox started ahead (bwrap, its PID 1, the trampoline, the spare
    keeper, slirp4netns) ends when the creating process exits or is killed."""
    code = (
        "import json, sys, time\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from proctable import children_of\n"
        "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "rt = LocalRuntime(sys.argv[1])\n"
        "for config in [SandboxConfig(), SandboxConfig(block_network=True)] * 2:\n"
        "    sb = rt.create(config)\n"
        "    stat = open(f'/proc/{sb._keeper.pid}/stat').read()\n"
        "    server = int(stat.rsplit(')', 1)[1].split()[1])\n"
        "    sb.terminate(wait=True)\n"
        "print(server, flush=True)\n"
        "sys.stdin.readline()\n"
        "if sys.argv[3] == 'SIGKILL':\n"
        "    time.sleep(60)\n"
    )
    proc = spawn_python(code, str(state_dir), str(Path(__file__).parents[1]), ending)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    _wait_warm(state_dir, count=2)
    pids, todo = [], [int(line)]
    while todo:
        children = children_of(todo.pop())
        pids += children
        todo += children
    assert len(pids) >= 2 + 3 * 2 + 1  # spares; bwrap, PID 1, trampoline each; slirp4netns
    if ending == "SIGKILL":
        proc.kill()
    else:
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait(60)
    deadline = time.monotonic() + 10
    while [pid for pid in pids if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [pid for pid in pids if _alive(pid)] == []
    assert all(p.name.startswith("sb-") for p in state_dir.iterdir())


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
