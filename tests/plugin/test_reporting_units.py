"""Pure logic of the reporting package (scrubbing, the summary) and the one-exec gathering of
every daemon's state and log on a real local sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_modal_sandbox import Daemon, Probe, SandboxSpec, start
from pytest_modal_sandbox.daemons import _parse_states, daemon_states
from pytest_modal_sandbox.events import Event
from pytest_modal_sandbox.reporting.starts import StartTable
from pytest_modal_sandbox.reporting.summary import Summary, summary_lines
from pytest_modal_sandbox.scrub import MASK, Scrubber

SECRET = 'pa"ss\\word\n2nd-line-of-it'


def test_scrubs_raw_repr_json_and_lines() -> None:
    s = Scrubber([SECRET])
    for shown in (SECRET, repr(SECRET), json.dumps(SECRET), "2nd-line-of-it"):
        out = s.text(f"before {shown} after")
        assert "2nd-line-of-it" not in out and "ss\\" not in out, out
        assert out.startswith("before ") and out.endswith(" after")


def test_longest_value_wins_and_empty_values_are_ignored() -> None:
    s = Scrubber(["abc", "abcdef", ""])
    assert s.text("xabcdefx abc") == f"x{MASK}x {MASK}"
    assert not Scrubber([""]) and Scrubber(["v"])


def test_deep_scrubs_pytest_longrepr_objects() -> None:
    def fails() -> None:
        token = "tok-12345"  # noqa: F841 (shown with --showlocals)
        raise AssertionError("the token tok-12345 is wrong")

    try:
        fails()
    except AssertionError:
        info = pytest.ExceptionInfo.from_current()
    longrepr = info.getrepr(showlocals=True, style="long", chain=True)
    assert "tok-12345" in str(longrepr)
    s = Scrubber(["tok-12345"])
    scrubbed = s.deep(longrepr)
    assert "tok-12345" not in str(scrubbed)
    assert "the token *** is wrong" in str(scrubbed)
    assert s.deep(("path", 3, "skipped: tok-12345")) == ("path", 3, "skipped: ***")


def test_summary_lines() -> None:
    s = Summary("local")
    s.add_ledger(
        [
            {"event": "created", "id": "sb-1", "test": "t.py::a"},
            {"event": "created", "id": "sb-1", "test": "t.py::a"},  # recorded twice: once
            {"event": "created", "id": "sb-2"},
            {"event": "terminated", "id": "sb-2"},
            {"event": "kept", "id": "sb-1"},
        ]
    )
    table = StartTable()
    starts = [  # (start, worker, label, sandbox id, requested, created, ready or failed, ahead)
        ("gw0:1", "gw0", "sandbox (t.py::a)", "sb-1", 10.0, 10.1, 12.1, True),
        ("gw1:1", "gw1", "db (session)", "sb-2", 10.0, 10.3, 10.8, True),
        ("gw1:2", "gw1", "web (session)", "", 10.0, None, 11.0, False),
        ("gw1:3", "gw1", "shared (session)", "sb-3", 10.0, None, 10.2, False),
    ]
    for key, worker, label, sid, requested, created, last, ahead in starts:
        same = {"start": key, "label": label, "ahead": ahead}
        table.feed(Event("requested", worker, t=requested, **same))
        if created is not None:
            table.feed(Event("created", worker, sid, t=created, **same))
            table.feed(Event("ready", worker, sid, t=last, **same))
        elif sid:
            table.feed(Event("attached", worker, sid, t=last, **same))
        else:
            table.feed(Event("failed", worker, t=last, error="daemon died", **same))
    table.feed(Event("taken", "gw0", ahead=True))
    s.starts, s.taken = table.snapshot(), table.taken
    s.leaked = ["sb-9"]
    lines = summary_lines(s)
    assert lines[0] == ("local: 2 created, 1 terminated, 1 kept, 1 leaked, 1 failed to start")
    assert lines[1] == "  create p50 0.20s, max 0.30s; ready p50 1.25s, max 2.00s  (2 started)"
    assert lines[2] == "  started ahead: 2, used 1, wasted 1"
    assert lines[4].split() == [
        "2.10s",
        "sb-1",
        "sandbox",
        "(t.py::a)",
        "[gw0]",
        "(create",
        "0.10s",
        "+",
        "ready",
        "2.00s)",
    ]
    assert "  failed: web (session): daemon died" in lines
    assert any(line.startswith("  kept: sb-1 (t.py::a)") for line in lines)
    assert "  LEAKED: sb-9 is still running after the end-of-run sweep" in lines


def test_parse_keeps_logs_without_a_final_newline() -> None:
    b = "@@pms-x"
    out = f"{b} a running - 0\nl1\nl2\n\n{b}-end\n{b} b exited 3 2\npartial\n{b}-end\n"
    a, bb = _parse_states(out, b)
    assert (a.name, a.state, a.exit_code, a.restarts, a.log_tail) == (
        "a",
        "running",
        None,
        0,
        "l1\nl2\n",
    )
    assert (bb.state, bb.exit_code, bb.restarts, bb.log_tail) == ("exited", 3, 2, "partial")
    assert bb.headline() == "daemon b: exited with code 3, restarted 2 times"


def test_every_daemon_in_one_exec(state_dir: Path) -> None:
    spec = SandboxSpec(
        daemons=[
            Daemon("a", "echo a1; echo a2; sleep 600", ready=Probe.log("a2")),
            Daemon("b", "echo b1; exit 5"),
            Daemon("c", "printf 'no newline'; sleep 600", ready=Probe.log("no newline")),
        ]
    )
    with start(spec, backend="local") as sb:
        calls = []
        real = sb._impl.exec

        def counting(argv, **kw):  # type: ignore[no-untyped-def]
            calls.append(argv)
            return real(argv, **kw)

        sb._impl.exec = counting  # type: ignore[method-assign]
        reports = {r.name: r for r in daemon_states(sb, log_lines=1)}
    assert len(calls) == 1
    assert reports["a"].state == "running" and reports["a"].log_tail == "a2\n"
    assert (reports["b"].state, reports["b"].exit_code) == ("exited", 5)
    assert reports["c"].log_tail == "no newline"
