"""How local sandboxes start and end: entrypoint, terminate, timeouts, owners."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_helpers import SRC, spawn_python

from pytest_modal_sandbox.runtime import (
    InvalidConfig,
    LocalRuntime,
    SandboxConfig,
    procs,
)


def test_entrypoint_success_failure_and_output(rt: LocalRuntime) -> None:
    ok = rt.create(SandboxConfig(command=["sh", "-c", "echo to-out; echo to-err >&2"]))
    bad = rt.create(SandboxConfig(command=["sh", "-c", "exit 4"]))
    killed = rt.create(SandboxConfig(command=["sh", "-c", "kill -KILL $$"]))
    st = ok.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("success", 0)
    assert ok.stdout_path.read_bytes() == b"to-out\n"
    assert ok.stderr_path.read_bytes() == b"to-err\n"
    st = bad.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("failure", 4)
    st = killed.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("failure", 137)


def test_default_entrypoint_runs_until_terminated(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    assert sb.poll() is None and sb.wait(0.2) is None
    sb.terminate()
    st = sb.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("terminated", None)
    sb.terminate(wait=True)  # idempotent
    assert rt.get(sb.id).poll() == st


def test_terminate_kills_a_setsid_daemon(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    daemon = "setsid sleep 4711 </dev/null >/dev/null 2>&1 &"
    assert sb.exec(["sh", "-c", daemon]).returncode == 0
    init_pid = sb._init.pid  # type: ignore[union-attr]
    pid_ns = os.readlink(f"/proc/{init_pid}/ns/pid")

    def in_sandbox() -> list[int]:
        pids = []
        for name in os.listdir("/proc"):
            try:
                if name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                    pids.append(int(name))
            except OSError:
                pass
        return pids

    found = in_sandbox()
    assert any(b"4711" in Path(f"/proc/{p}/cmdline").read_bytes() for p in found)
    sb.terminate(wait=True)
    assert in_sandbox() == []


def test_timeout_ends_the_sandbox(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(timeout=0.5))
    st = sb.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("timeout", None)


def test_idle_timeout_fires_when_nothing_happens(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(idle_timeout=0.5))
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


def test_idle_timeout_waits_for_a_running_exec(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(idle_timeout=0.5))
    out = sb.exec(["sleep", "1.5"])
    assert out.returncode == 0  # the sandbox was not idle-killed under the exec
    assert sb.poll() is None  # and the idle clock restarted when the exec ended
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


def test_processes_inside_do_not_count_as_activity(rt: LocalRuntime) -> None:
    sb = rt.create(
        SandboxConfig(command=["sh", "-c", "while :; do sleep 0.1; done"], idle_timeout=0.5)
    )
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


def test_activity_held_from_another_process_counts(rt: LocalRuntime, state_dir: Path) -> None:
    sb = rt.create(SandboxConfig(idle_timeout=0.5))
    bridge = sb.activity()  # keeps it alive while the holder's interpreter starts
    bridge.__enter__()
    holder = spawn_python(
        "import sys; from pytest_modal_sandbox.runtime import LocalRuntime\n"
        "sb = LocalRuntime(sys.argv[1]).get(sys.argv[2])\n"
        "with sb.activity():\n"
        "    print('held', flush=True); sys.stdin.readline()\n",
        str(state_dir),
        sb.id,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        bridge.__exit__(None, None, None)
        time.sleep(1.5)
        assert sb.poll() is None
    finally:
        holder.communicate("\n", timeout=30)
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


def test_sandbox_ends_when_its_owner_is_killed(rt: LocalRuntime, state_dir: Path) -> None:
    owner = spawn_python(
        "import sys; from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "sb = LocalRuntime(sys.argv[1]).create(SandboxConfig())\n"
        "print(sb.id, flush=True); sys.stdin.readline()\n",
        str(state_dir),
    )
    assert owner.stdout is not None
    sandbox_id = owner.stdout.readline().strip()
    sb = rt.get(sandbox_id)
    assert sb.poll() is None
    owner.send_signal(signal.SIGKILL)
    owner.communicate(timeout=30)
    st = sb.wait(30)
    assert st is not None and st.kind == "terminated"


def test_ctrl_c_to_the_owners_process_group_does_not_reach_the_sandbox(
    rt: LocalRuntime, state_dir: Path
) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
            "sb = LocalRuntime(sys.argv[1]).create(SandboxConfig())\n"
            "print(sb.id, flush=True); sys.stdin.readline()\n",
            str(state_dir),
        ],
        env=dict(os.environ, PYTHONPATH=SRC),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None
    sb = rt.get(owner.stdout.readline().strip())
    os.killpg(owner.pid, signal.SIGINT)
    time.sleep(0.3)
    assert sb.poll() is None
    owner.communicate("\n", timeout=30)
    assert sb.wait(30) is not None  # owner exited normally: the sandbox ends with it


def test_detach_owner_lets_the_sandbox_outlive_its_creator(
    rt: LocalRuntime, state_dir: Path
) -> None:
    owner = spawn_python(
        "import sys; from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "sb = LocalRuntime(sys.argv[1]).create(SandboxConfig())\n"
        "sb.detach_owner(); print(sb.id, flush=True)\n",
        str(state_dir),
    )
    out, err = owner.communicate(timeout=30)
    assert owner.returncode == 0, err
    sb = rt.get(out.strip())
    time.sleep(0.3)
    assert sb.poll() is None
    assert sb.exec(["true"]).returncode == 0
    sb.terminate(wait=True)


def test_owner_lock_ties_the_sandbox_to_the_lock_holder(
    rt: LocalRuntime, state_dir: Path, tmp_path: Path
) -> None:
    lock = tmp_path / "run.lock"
    lock.touch()
    holder = spawn_python(
        "import fcntl, sys\n"
        "f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); sys.stdin.readline()\n",
        str(lock),
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    try:
        creator = spawn_python(  # e.g. an xdist worker creating a run-shared sandbox
            "import sys; from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
            "sb = LocalRuntime(sys.argv[1]).create(SandboxConfig(owner_lock=sys.argv[2]))\n"
            "print(sb.id, flush=True)\n",
            str(state_dir),
            str(lock),
        )
        out, err = creator.communicate(timeout=30)
        assert creator.returncode == 0, err
        sb = rt.get(out.strip())
        time.sleep(1.2)  # > two lock polls after the creator's exit
        assert sb.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    st = sb.wait(30)
    assert st is not None and st.kind == "terminated"


def test_owner_lock_must_be_held(rt: LocalRuntime, tmp_path: Path) -> None:
    lock = tmp_path / "free.lock"
    lock.touch()
    with pytest.raises(InvalidConfig, match="nobody holds"):
        rt.create(SandboxConfig(owner_lock=str(lock)))
    with pytest.raises(InvalidConfig, match="cannot open"):
        rt.create(SandboxConfig(owner_lock=str(tmp_path / "missing.lock")))
    with open(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        sb = rt.create(SandboxConfig(owner_lock=str(lock)))
        assert sb.poll() is None
    st = sb.wait(30)  # lock released: the owner is gone
    assert st is not None and st.kind == "terminated"


def test_failed_start_leaves_nothing(rt: LocalRuntime, state_dir: Path) -> None:
    with pytest.raises(InvalidConfig, match="workdir"):
        rt.create(SandboxConfig(workdir="/etc/passwd"))
    assert [p for p in state_dir.iterdir() if p.name.startswith("sb-")] == []


def test_touch_and_popen_count_as_activity(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(idle_timeout=1.0))
    for _ in range(5):  # 1.5 s of touches, each well inside the idle period
        time.sleep(0.3)
        sb.touch()
    assert sb.poll() is None
    proc = sb.popen(["sleep", "2.5"], stdin=subprocess.DEVNULL)
    assert proc.wait(30) == 0  # the sandbox was not idle-killed under it
    assert sb.poll() is None
    st = sb.wait(30)
    assert st is not None and st.kind == "idle_timeout"


def test_execs_hold_no_token_without_idle_timeout(rt: LocalRuntime, state_dir: Path) -> None:
    """Only an idle_timeout counts activity: without one an exec costs no file operations."""
    sb = rt.create(SandboxConfig())
    proc = sb.popen(["sleep", "0.5"], stdin=subprocess.DEVNULL)
    with sb.activity():
        assert not (state_dir / sb.id / "activity").exists()
    assert proc.wait(30) == 0
    idle = rt.create(SandboxConfig(idle_timeout=60))
    with idle.activity():
        assert len(list((state_dir / idle.id / "activity").iterdir())) == 1


def test_concurrent_creates_from_threads(rt: LocalRuntime) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pytest_modal_sandbox.runtime import NameTaken

    def cycle(i: int) -> bytes:
        sb = rt.create(SandboxConfig(env={"I": str(i)}))
        out = sb.exec(["sh", "-c", 'echo "$I"']).stdout
        sb.terminate(wait=True)
        return out

    def claim(_: int) -> str:
        try:
            return rt.create(SandboxConfig(app="race", name="only-one")).id
        except NameTaken:
            return "taken"

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(cycle, range(16))) == [f"{i}\n".encode() for i in range(16)]
        claims = list(pool.map(claim, range(6)))
    assert claims.count("taken") == 5
    assert rt.from_name("race", "only-one").id in claims


def test_missing_entrypoint_fails_like_a_shell_would(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(command=["no-such-entrypoint"]))
    st = sb.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("failure", 127)
    assert b"no-such-entrypoint" in sb.stderr_path.read_bytes()


def test_wait_returns_after_the_keeper_cleaned_up(rt: LocalRuntime) -> None:
    """poll() sees the status as soon as it is recorded; wait() also waits for the clean-up,
    even when poll() already answered (the keeper removes the writable dirs after that)."""
    many = "i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done"
    sb = rt.create(SandboxConfig(command=["sh", "-c", many], workdir="/scratch"))
    workdir = sb.state_dir / "work"
    while sb.poll() is None:
        time.sleep(0.001)
    st = sb.wait(30)
    assert st is not None and st.kind == "success"
    assert not workdir.exists()
    assert not procs.is_alive(sb._keeper)
