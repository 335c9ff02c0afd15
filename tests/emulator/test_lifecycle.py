"""Conformance of the real ``modal`` client against the emulator: sandbox lifecycle."""

from __future__ import annotations

import time
import uuid
import warnings
from typing import Any

import pytest
from emulator_helpers import eventually

modal = pytest.importorskip("modal")
from modal.exception import (  # noqa: E402
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)


def test_exec_stdout_stderr_and_returncode(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.stdout.read() == "out\n"
    assert p.stderr.read() == "err\n"
    assert p.wait() == 3
    assert p.returncode == 3


def test_exec_missing_binary_is_exit_127_not_an_error(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("definitely-not-a-program")
    assert p.wait() == 127
    assert "definitely-not-a-program" in p.stderr.read()


def test_exec_killed_by_signal_is_128_plus_n(make_sandbox: Any) -> None:
    sb = make_sandbox()
    assert sb.exec("sh", "-c", "kill -9 $$").wait() == 137


def test_exec_stdin_and_poll(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("cat")
    assert p.poll() is None  # still waiting for stdin
    p.stdin.write(b"hello ")
    p.stdin.drain()
    p.stdin.write("world")
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.stdout.read() == "hello world"
    assert p.wait() == 0
    assert p.poll() == 0


def test_exec_bytes_mode_and_large_output(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("head", "-c", "1000000", "/dev/zero", text=False)
    data = p.stdout.read()
    assert data == b"\0" * 1_000_000
    assert p.wait() == 0


def test_exec_line_iteration(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("sh", "-c", "for i in 1 2 3; do echo line$i; done", bufsize=1)
    assert list(p.stdout) == ["line1\n", "line2\n", "line3\n"]


def test_exec_workdir_and_env_and_sandbox_workdir(make_sandbox: Any) -> None:
    sb = make_sandbox(workdir="/srv/app", env={"SB_VAR": "sandbox"})
    p = sb.exec("sh", "-c", "pwd; echo $SB_VAR $EXEC_VAR", env={"EXEC_VAR": "exec"})
    assert p.stdout.read() == "/srv/app\nsandbox exec\n"
    p = sb.exec("pwd", workdir="/tmp")
    assert p.stdout.read() == "/tmp\n"


def test_exec_timeout_kills_the_process(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("sh", "-c", "echo started; sleep 30", timeout=1)
    assert p.wait() == -1  # the client's own deadline
    # The emulator kills it too (a moment later): a fresh exec finds no sleeping process.
    assert eventually(lambda: "sleep 30" not in sb.exec("ps", "-eo", "args").stdout.read())


def test_entrypoint_output_exit_code_and_wait(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "echo hello; echo oops >&2; exit 7")
    sb.wait()
    assert sb.returncode == 7
    assert sb.poll() == 7
    assert sb.stdout.read() == "hello\n"
    assert sb.stderr.read() == "oops\n"


def test_entrypoint_stdin(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "read line; echo got:$line; cat")
    sb.stdin.write(b"first\n")
    sb.stdin.drain()
    sb.stdin.write(b"rest")
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    assert sb.returncode == 0
    assert sb.stdout.read() == "got:first\nrest"


def test_stdin_write_after_exit_is_a_value_error(make_sandbox: Any) -> None:
    sb = make_sandbox("true")
    sb.wait()
    sb.stdin.write(b"late")
    with pytest.raises(ValueError):
        sb.stdin.drain()


def test_entrypoint_output_is_readable_while_running(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "echo one; read x; echo two")
    lines = iter(sb.stdout)
    assert next(lines) == "one\n"
    sb.stdin.write(b"go\n")
    sb.stdin.drain()
    assert next(lines) == "two\n"
    sb.wait()


def test_terminate_poll_wait_and_returncode(make_sandbox: Any) -> None:
    sb = make_sandbox()
    assert sb.poll() is None
    sb.terminate()
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137
    assert sb.poll() == 137
    sb.terminate()  # idempotent


def test_terminate_wait_returns_137(make_sandbox: Any) -> None:
    sb = make_sandbox()
    assert sb.terminate(wait=True) == 137


def test_terminate_kills_background_daemons(make_sandbox: Any) -> None:
    sb = make_sandbox()
    sb.exec("sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &").wait()
    sb.terminate(wait=True)
    assert sb.returncode == 137


def test_exec_on_finished_sandbox(make_sandbox: Any, client: Any) -> None:
    sb = make_sandbox()
    sb.terminate(wait=True)
    with pytest.raises(NotFoundError, match="already finished"):
        sb.exec("true").wait()
    # A fresh handle learns the task id too (Modal answers it for a finished sandbox), and
    # the router refuses the exec the same way.
    fresh = modal.Sandbox.from_id(sb.object_id, client=client)
    with pytest.raises(NotFoundError, match="already finished"):
        fresh.exec("true")


def test_finished_sandbox_output_from_a_fresh_handle(make_sandbox: Any, client: Any) -> None:
    sb = make_sandbox("sh", "-c", "echo out; echo err >&2; exit 3")
    sb.wait()
    fresh = modal.Sandbox.from_id(sb.object_id, client=client)
    assert fresh.returncode == 3
    assert fresh.stdout.read() == "out\n"  # used to hang: no task id for a finished sandbox
    assert fresh.stderr.read() == "err\n"
    with pytest.raises(ConflictError):
        fresh.wait_until_ready(timeout=5)


def test_timeout_ends_with_timeout_status(make_sandbox: Any) -> None:
    sb = make_sandbox(timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124


def test_idle_timeout_fires_when_nothing_happens(make_sandbox: Any) -> None:
    sb = make_sandbox(idle_timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124


@pytest.mark.slow  # holds the sandbox busy for several idle_timeouts
def test_idle_timeout_waits_for_a_running_exec(make_sandbox: Any) -> None:
    sb = make_sandbox(idle_timeout=1)
    p = sb.exec("sleep", "3")
    assert p.wait() == 0  # would be 137 (or a lost sandbox) had the idle timeout fired
    assert sb.poll() is None
    with pytest.raises(SandboxTimeoutError):
        sb.wait()


@pytest.mark.slow  # holds the sandbox busy for several idle_timeouts
def test_idle_timeout_waits_while_stdin_is_written(make_sandbox: Any) -> None:
    sb = make_sandbox("cat", idle_timeout=1)
    end = time.monotonic() + 3
    while time.monotonic() < end:  # 3 idle_timeouts of steady stdin writes
        sb.stdin.write(b"tick\n")
        sb.stdin.drain()
        time.sleep(0.2)
    assert sb.poll() is None
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.stdout.read().count("tick") >= 10


def test_idle_timeout_ignores_processes_inside(make_sandbox: Any) -> None:
    sb = make_sandbox("sleep", "300", idle_timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()


def test_from_id(make_sandbox: Any, client: Any) -> None:
    sb = make_sandbox()
    same = modal.Sandbox.from_id(sb.object_id, client=client)
    assert same.object_id == sb.object_id
    assert same.exec("echo", "hi").stdout.read() == "hi\n"
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_id("sb-01ARZ3NDEKTSV4RRFFQ69G5FAV", client=client)


def test_names_unique_among_running_and_reusable_after_exit(make_sandbox: Any, client: Any) -> None:
    name = f"n-{uuid.uuid4().hex[:8]}"
    first = make_sandbox(name=name)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        make_sandbox(name=name)
    found = modal.Sandbox.from_name("conformance", name, client=client)
    assert found.object_id == first.object_id
    first.terminate(wait=True)
    with pytest.raises(NotFoundError, match="not found"):
        modal.Sandbox.from_name("conformance", name, client=client)
    second = make_sandbox(name=name)
    assert second.object_id != first.object_id
    assert modal.Sandbox.from_name("conformance", name, client=client).object_id == (
        second.object_id
    )
    second.terminate()  # not waiting: the name is free as soon as terminate() returns
    third = make_sandbox(name=name)
    assert third.object_id not in (first.object_id, second.object_id)


def test_from_name_unknown_app_or_name_is_not_found(client: Any) -> None:
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_name("conformance", "no-such-sandbox", client=client)
    with pytest.raises(NotFoundError):
        modal.Sandbox.from_name("no-such-app-xyz", "x", client=client)


def test_app_lookup_without_create_is_not_found(client: Any, app: Any) -> None:
    with pytest.raises(NotFoundError):
        modal.App.lookup(f"missing-{uuid.uuid4().hex[:6]}", client=client)
    app = modal.App.lookup("conformance", client=client)
    assert app.app_id.startswith("ap-")


def test_tags_and_list_with_pagination(make_sandbox: Any, app: Any, client: Any) -> None:
    run = uuid.uuid4().hex[:8]
    made = [make_sandbox(tags={"run": run, "i": str(i)}) for i in range(5)]
    other = make_sandbox(tags={"run": "other"})
    listed = list(modal.Sandbox.list(app_id=app.app_id, tags={"run": run}, client=client))
    # The session emulator pages by 2, so this took 3 pages + 1 empty page.
    assert [sb.object_id for sb in listed] == [sb.object_id for sb in reversed(made)]
    assert other.object_id not in {sb.object_id for sb in listed}
    one = list(modal.Sandbox.list(app_id=app.app_id, tags={"run": run, "i": "3"}, client=client))
    assert [sb.object_id for sb in one] == [made[3].object_id]
    with warnings.catch_warnings():  # listing a whole environment is deprecated, still works
        warnings.simplefilter("ignore")
        env_wide = list(modal.Sandbox.list(tags={"run": run, "i": "3"}, client=client))
    assert [sb.object_id for sb in env_wide] == [made[3].object_id]
    made[0].set_tags({"run": run, "i": "0", "extra": "yes"})
    assert made[0].get_tags() == {"run": run, "i": "0", "extra": "yes"}
    made[0].set_tags({"only": "this"})  # replaces all
    assert made[0].get_tags() == {"only": "this"}
    made[1].terminate(wait=True)  # list shows running sandboxes only
    listed = list(modal.Sandbox.list(app_id=app.app_id, tags={"run": run}, client=client))
    assert {sb.object_id for sb in listed} == {s.object_id for s in made[2:]}


def test_secrets_and_env_in_modals_order(make_sandbox: Any, client: Any) -> None:
    created = f"made-{uuid.uuid4().hex[:6]}"
    modal.Secret.objects.create(created, {"MADE": "by-client", "SHARED": "made"}, client=client)
    sb = make_sandbox(
        secrets=[
            modal.Secret.from_dict({"SHARED": "dict", "DICT": "1"}),
            modal.Secret.from_name("emu-named"),
            modal.Secret.from_name(created),
        ],
        env={"ENV_ONLY": "env"},
    )
    out = sb.exec("sh", "-c", "echo $SHARED $DICT $NAMED $MADE $ENV_ONLY").stdout.read()
    assert out == "made 1 from-cli by-client env\n"
    # exec-level secrets and env go on top of the sandbox's, env last
    p = sb.exec(
        "sh",
        "-c",
        "echo $SHARED $ENV_ONLY $X",
        secrets=[modal.Secret.from_dict({"SHARED": "exec-secret", "X": "secret"})],
        env={"X": "exec-env"},
    )
    assert p.stdout.read() == "exec-secret env exec-env\n"
    with pytest.raises(NotFoundError):
        make_sandbox(secrets=[modal.Secret.from_name("no-such-secret")])
    modal.Secret.objects.delete(created, client=client)
    with pytest.raises(NotFoundError):
        make_sandbox(secrets=[modal.Secret.from_name(created)])


def test_images_are_accepted_and_cached(make_sandbox: Any, emulator: Any) -> None:
    image = modal.Image.debian_slim().pip_install("requests")
    sb = make_sandbox(image=image)
    assert sb.exec("true").wait() == 0
    make_sandbox(image=modal.Image.from_registry("alpine:3.21"))
    before = emulator.stats()["rpcs"]["control"]
    # Same definitions, new Image objects: cache hits, so no build stream is joined.
    make_sandbox(image=modal.Image.debian_slim().pip_install("requests"))
    after = emulator.stats()["rpcs"]["control"]
    assert after["ImageGetOrCreate"] > before["ImageGetOrCreate"]
    assert after["ImageJoinStreaming"] == before["ImageJoinStreaming"]


def test_wait_long_poll_returns_while_running(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "sleep 1; exit 4")
    start = time.monotonic()
    sb.wait()
    assert sb.returncode == 4
    assert time.monotonic() - start < 30  # sanity: the long-poll answered, no hang


def test_set_name_later(make_sandbox: Any, client: Any) -> None:
    name = f"late-{uuid.uuid4().hex[:8]}"
    sb = make_sandbox()
    sb._experimental_set_name(name)
    assert modal.Sandbox.from_name("conformance", name, client=client).object_id == sb.object_id
    sb._experimental_set_name(name)  # same name again: fine
    with pytest.raises(ConflictError):
        sb._experimental_set_name(name + "-other")  # already named
    with pytest.raises(AlreadyExistsError):
        make_sandbox()._experimental_set_name(name)


def test_detached_handle_can_still_wait(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "exit 5")
    sb.detach()
    sb.wait()
    assert sb.returncode == 5


def test_client_hello(client: Any) -> None:
    client.hello()
