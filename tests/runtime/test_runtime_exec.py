"""Exec inside a local sandbox: output, exit codes, timeouts, env, workdir, stdin."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pytest_modal_sandbox.runtime import (
    InvalidArgument,
    LocalRuntime,
    SandboxConfig,
    SandboxNotFound,
    spawn_exec,
)


def test_exec_output_and_exit_code(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    out = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out.returncode, out.stdout, out.stderr, out.timed_out) == (3, b"out\n", b"err\n", False)


def test_missing_program_is_127(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    out = sb.exec(["no-such-program-here"])
    assert out.returncode == 127
    assert b"no-such-program-here" in out.stderr


def test_killed_by_signal_is_128_plus_n(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    assert sb.exec(["sh", "-c", "kill -TERM $$"]).returncode == 128 + 15
    assert sb.exec(["sh", "-c", "kill -KILL $$"]).returncode == 128 + 9


def _sandbox_cmdlines(sb) -> str:  # type: ignore[no-untyped-def]
    script = 'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline; echo; done'
    return sb.exec(["sh", "-c", script]).stdout.decode()


def test_exec_timeout_kills_the_process_group(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    out = sb.exec(["sh", "-c", "echo started; sleep 4242 & sleep 4343"], timeout=0.5)
    assert out.timed_out and out.returncode == -1
    assert out.stdout == b"started\n"
    listing = _sandbox_cmdlines(sb)
    assert "sleep 4242" not in listing and "sleep 4343" not in listing
    assert sb.poll() is None  # the sandbox itself lives on


def test_env_defaults_config_and_overrides(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(env={"A": "from-config", "B": "b"}))
    out = sb.exec(["env"], env={"A": "from-exec", "C": "c"}).stdout.decode().splitlines()
    env = dict(line.split("=", 1) for line in out)
    assert env["A"] == "from-exec" and env["B"] == "b" and env["C"] == "c"
    assert env["HOME"] == "/root"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "PYTEST_CURRENT_TEST" not in env  # nothing leaks in from the host


def test_env_reaches_the_entrypoint(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(command=["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hi"}))
    assert sb.wait(30) is not None
    assert sb.stdout_path.read_bytes() == b"hi\n"


def test_workdir_is_a_private_writable_directory(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(workdir="/srv/app"))
    assert sb.exec(["pwd"]).stdout == b"/srv/app\n"
    assert sb.exec(["sh", "-c", "echo data > f && cat f"]).stdout == b"data\n"
    other = rt.create(SandboxConfig(workdir="/srv/app"))
    assert other.exec(["ls", "-A"]).stdout == b""  # not shared between sandboxes


def test_workdir_whose_parent_is_missing_on_the_host(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(workdir="/pms-no-such-top/app"))
    assert sb.exec(["sh", "-c", "pwd; touch x; ls"]).stdout == b"/pms-no-such-top/app\nx\n"
    assert sb.exec(["test", "-d", "/usr/bin"]).returncode == 0  # the rest of / is still there


def test_exec_workdir_override_follows_symlinks_inside(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    sb.exec(["sh", "-c", "mkdir -p /tmp/real && ln -s /tmp/real /tmp/link"])
    assert sb.exec(["pwd", "-P"], workdir="/tmp/link").stdout == b"/tmp/real\n"
    with pytest.raises(InvalidArgument, match="not a directory"):
        sb.exec(["true"], workdir="/tmp/missing")
    with pytest.raises(InvalidArgument, match="absolute"):
        sb.exec(["true"], workdir="relative")


def test_stdin_is_fed_to_exec(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    data = bytes(range(256)) * 2048  # larger than a pipe buffer
    out = sb.exec(["sh", "-c", "cat; echo done >&2"], stdin=data)
    assert out.stdout == data and out.stderr == b"done\n"


def test_background_process_holding_stdout_does_not_hang_exec(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    out = sb.exec(["sh", "-c", "sleep 30 & echo quick"])
    assert out.returncode == 0 and out.stdout == b"quick\n"


def test_popen_and_exec_command(rt: LocalRuntime) -> None:
    import subprocess

    sb = rt.create(SandboxConfig())
    proc = sb.popen(["sh", "-c", "read line; echo got $line"])
    out, _ = proc.communicate(b"hello\n", timeout=30)
    assert out == b"got hello\n" and proc.returncode == 0
    argv, env = sb.exec_command(
        ["sh", "-c", 'echo "$X"; grep NoNewPrivs /proc/self/status'], env={"X": "y"}
    )
    spawned = spawn_exec(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
    assert spawned.communicate(timeout=30)[0] == b"y\nNoNewPrivs:\t1\n"
    done = subprocess.run(argv, env=env, capture_output=True, start_new_session=True, timeout=30)
    assert done.stdout == b"y\nNoNewPrivs:\t0\n"  # spawned elsewhere: without the thread's walls


def test_bad_arguments_are_named(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    with pytest.raises(InvalidArgument, match="argv"):
        sb.exec("echo hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="argv"):
        sb.exec([])
    with pytest.raises(InvalidArgument, match="env"):
        sb.exec(["true"], env={"A=B": "x"})
    with pytest.raises(InvalidArgument, match="timeout"):
        sb.exec(["true"], timeout=0)


def test_exec_on_a_finished_sandbox_says_how_it_ended(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig(command=["sh", "-c", "exit 7"]))
    assert sb.wait(30) is not None
    with pytest.raises(SandboxNotFound, match=r"finished \(failure \(exit code 7\)\)"):
        sb.exec(["true"])
    sb2 = rt.create(SandboxConfig())
    sb2.terminate(wait=True)
    with pytest.raises(SandboxNotFound, match="terminated"):
        sb2.exec(["true"])


def test_write_stdin_feeds_the_entrypoint(rt: LocalRuntime, state_dir: object) -> None:
    from runtime_helpers import run_python

    from pytest_modal_sandbox.errors import SandboxError

    sb = rt.create(SandboxConfig(command=["sh", "-c", "cat; echo end"], stdin_pipe=True))
    sb.write_stdin(b"line one\n")
    sb.write_stdin(b"line two\n", eof=True)
    st = sb.wait(30)
    assert st is not None and st.kind == "success"
    assert sb.stdout_path.read_bytes() == b"line one\nline two\nend\n"
    with pytest.raises(SandboxNotFound, match="finished"):
        sb.write_stdin(b"late")
    plain = rt.create(SandboxConfig())
    with pytest.raises(SandboxError, match="stdin_pipe=True"):
        plain.write_stdin(b"x")
    piped = rt.create(SandboxConfig(stdin_pipe=True))
    code = (
        "import sys\nfrom pytest_modal_sandbox.runtime import LocalRuntime\n"
        "try:\n    LocalRuntime(sys.argv[1]).get(sys.argv[2]).write_stdin(b'x')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    done = run_python(code, str(state_dir), piped.id, timeout=60)
    assert "only the process that created" in done.stdout


def test_kill_exec_stops_the_whole_exec_and_nothing_is_orphaned(rt: LocalRuntime) -> None:
    import os
    import subprocess

    from pytest_modal_sandbox.runtime import kill_exec

    sb = rt.create(SandboxConfig())
    proc = sb.popen(
        ["sh", "-c", "sleep 4141 & sleep 4242 & echo up; wait"], stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    kill_exec(proc.pid)
    assert proc.wait(30) == -9  # nsenter reaped its child, then took the same signal
    listing = _sandbox_cmdlines(sb)
    assert "sleep 4141" not in listing and "sleep 4242" not in listing
    # nothing of the exec went to the host's init as an orphan
    init = sb._init.pid  # type: ignore[union-attr]
    pid_ns = os.readlink(f"/proc/{init}/ns/pid")
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                assert int(stat[1]) != 1 or int(name) == init, f"orphan {name} under host init"
        except OSError:
            pass


def test_an_exec_that_could_not_enter_an_ending_sandbox_is_sandbox_not_found(
    rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nsenter failing to enter (exit 1, "nsenter: ...") because the sandbox was ending as the
    command started is the sandbox's end, not the command's result; a missing program is the
    command's (127, at once)."""
    from pytest_modal_sandbox.runtime import sandbox as sandbox_module

    assert sandbox_module._entry_failed(b"nsenter: reassociate to namespace 'ns/pid' failed\n")
    assert not sandbox_module._entry_failed(b"nsenter: failed to execute nope: No such file\n")
    assert not sandbox_module._entry_failed(b"some output\nnsenter: x\n")
    sb = rt.create(SandboxConfig())
    assert sb.exec(["/no/such/program"]).returncode == 127
    monkeypatch.setattr(sandbox_module, "ENDING_SETTLE", 0.2)
    sb._ended_under(["true"])  # a running sandbox: nothing to say
    os.kill(sb.init_pid, signal.SIGKILL)
    with pytest.raises(SandboxNotFound, match=r"ended as 'true' was starting"):
        sb._ended_under(["true"])
