"""Names, tags, and finding sandboxes from other processes through the state dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_helpers import run_python

from pytest_modal_sandbox.runtime import (
    LocalRuntime,
    NameTaken,
    SandboxConfig,
    SandboxNotFound,
)


def test_names_are_unique_among_running_sandboxes_of_an_app(rt: LocalRuntime) -> None:
    first = rt.create(SandboxConfig(app="a", name="db"))
    with pytest.raises(NameTaken, match=f"'db' \\({first.id}\\)"):
        rt.create(SandboxConfig(app="a", name="db"))
    other_app = rt.create(SandboxConfig(app="b", name="db"))  # per app
    assert rt.from_name("a", "db") == first and rt.from_name("b", "db") == other_app
    first.terminate(wait=True)
    with pytest.raises(SandboxNotFound, match="no running sandbox named 'db'"):
        rt.from_name("a", "db")
    assert rt.from_name("a", "db", include_finished=True) == first
    again = rt.create(SandboxConfig(app="a", name="db"))  # reusable after exit
    assert rt.from_name("a", "db") == again


def test_tags_set_and_list(rt: LocalRuntime) -> None:
    one = rt.create(SandboxConfig(tags={"run": "r1", "worker": "gw0"}))
    two = rt.create(SandboxConfig(tags={"run": "r1", "worker": "gw1"}))
    rt.create(SandboxConfig(tags={"run": "r2"}))
    assert rt.list(tags={"run": "r1"}) == [two, one]  # newest first
    assert rt.list(tags={"run": "r1", "worker": "gw0"}) == [one]
    one.set_tags({"run": "r3"})  # replaces all
    assert one.tags() == {"run": "r3"}
    assert rt.list(tags={"run": "r1"}) == [two]
    two.terminate(wait=True)
    assert rt.list(tags={"run": "r1"}) == []
    assert rt.list(tags={"run": "r1"}, include_finished=True) == [two]


def test_list_by_app(rt: LocalRuntime) -> None:
    a = rt.create(SandboxConfig(app="x"))
    rt.create(SandboxConfig(app="y"))
    assert rt.list(app="x") == [a]
    assert len(rt.list()) == 2


def test_get_unknown_id(rt: LocalRuntime) -> None:
    with pytest.raises(SandboxNotFound, match="sb-00000000000000000000000000"):
        rt.get("sb-00000000000000000000000000")
    with pytest.raises(SandboxNotFound, match="nonsense"):
        rt.get("../nonsense")


def test_get_exec_list_terminate_from_another_process(rt: LocalRuntime, state_dir: Path) -> None:
    sb = rt.create(SandboxConfig(app="shared", name="svc", tags={"k": "v"}))
    code = """
import json, sys
from pytest_modal_sandbox.runtime import LocalRuntime
rt = LocalRuntime(sys.argv[1])
sb = rt.get(sys.argv[2])
out = {
    "exec": sb.exec(["sh", "-c", "echo $((6*7))"]).stdout.decode(),
    "named": rt.from_name("shared", "svc").id,
    "listed": [s.id for s in rt.list(tags={"k": "v"})],
    "running": sb.poll() is None,
}
sb.terminate(wait=True)
out["after"] = sb.poll().kind
print(json.dumps(out))
"""
    done = run_python(code, str(state_dir), sb.id, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "exec": "42\n",
        "named": sb.id,
        "listed": [sb.id],
        "running": True,
        "after": "terminated",
    }
    st = sb.poll()
    assert st is not None and st.kind == "terminated"


def test_finished_records_are_kept_then_collected(rt: LocalRuntime, state_dir: Path) -> None:
    sb = rt.create(SandboxConfig(command=["true"]))
    assert sb.wait(30) is not None
    assert rt.gc() == []  # kept a while: get() still answers
    assert rt.get(sb.id).poll() is not None
    assert rt.gc(keep_finished=0) == [sb.id]
    with pytest.raises(SandboxNotFound):
        rt.get(sb.id)
    assert not (state_dir / sb.id).exists()


def test_keeper_killed_is_recorded_as_terminated(rt: LocalRuntime) -> None:
    import os
    import signal

    sb = rt.create(SandboxConfig(workdir="/srv/w"))
    os.kill(sb._keeper.pid, signal.SIGKILL)
    st = sb.wait(30)
    assert st is not None and (st.kind, st.exitcode) == ("terminated", None)
    assert not (sb.state_dir / "work").exists()  # the writable dir was removed anyway
