"""Live progress while sandboxes start: plain lines, in place on a tty, under xdist, quiet.

The tty test runs the inner pytest on a pseudo-terminal and replays what it wrote through a
small terminal model (carriage return, newline, erase line, cursor up), so it asserts on the
screen a user ends up with, not on escape sequences.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from inner_runs import ADDOPTS
from pytest_modal_sandbox.events import Event
from pytest_modal_sandbox.progress import LineView, LiveView
from pytest_modal_sandbox.reporting.starts import StartTable

# The pytest layer's own logic, the same on every backend: these tests run on the local one.
PYTEST_LAYER_ONLY = pytest.mark.parametrize("backend", ["local"])

SUITE = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

slow = Daemon("slow", "sleep 1; echo up; sleep 600", ready=Probe.log("up"))
alpha = sandbox_fixture(scope="session", daemons=[slow])
beta = sandbox_fixture(scope="session", daemons=[slow])

def test_session(alpha, beta):
    assert alpha.id != beta.id

@pytest.mark.sandbox(daemons=[slow])
def test_function(sandbox):
    assert sandbox.exec("true").ok
"""

LABELS = ["alpha (session)", "beta (session)", "sandbox (test_progress_suite.py::test_function)"]


def render(data: str) -> list[str]:
    """The screen (as lines) after ``data`` was written to a terminal; colours dropped."""
    lines = [""]
    row = col = 0
    for tok in re.split(r"(\x1b\[[0-9;]*[A-Za-z]|\r|\n)", data.replace("\r\n", "\n")):
        if not tok:
            continue
        if tok == "\r":
            col = 0
        elif tok == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif tok.startswith("\x1b["):
            if tok.endswith("K"):
                lines[row] = lines[row][:col]
            elif tok.endswith("A"):
                row = max(0, row - int(tok[2:-1] or 1))
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + tok + line[col + len(tok) :]
            col += len(tok)
    return lines


def run_on_pty(args: list[str], cwd: Path, columns: int = 160, timeout: float = 120) -> str:
    """Run ``args`` with a pseudo-terminal as stdout/stderr; everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = dict(os.environ, TERM="xterm", COLUMNS=str(columns))
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return out.decode(errors="replace")


@PYTEST_LAYER_ONLY
def test_plain_lines_for_each_sandbox(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=2)
    for label in LABELS:
        result.stdout.fnmatch_lines(
            [
                f"modal-sandbox: {label} created in *s: sb-*",
                f"modal-sandbox: {label} ready in *s (*s in all)",
            ]
        )
    # pytest's own line goes on below the progress lines
    result.stdout.fnmatch_lines(["test_progress_suite.py .*"])
    assert "\x1b[" not in result.stdout.str()


@pytest.mark.parametrize("args", [["-q"], ["--modal-sandbox-progress=off"]])
def test_quiet_and_off_are_silent(sbtester, args):
    sbtester.makepyfile(test_progress_suite=SUITE)
    result = sbtester.runpytest("--modal-sandbox=local", *args)
    result.assert_outcomes(passed=2)
    assert "created in" not in result.stdout.str()


@PYTEST_LAYER_ONLY
def test_progress_on_a_tty_is_rewritten_in_place(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    raw = run_on_pty(
        [sys.executable, "-m", "pytest", f"--modal-sandbox={backend}", *ADDOPTS.split()],
        sbtester.path,
    )
    assert re.search(r"\r[^\n]*(creating|waiting for readiness)", raw), "nothing rewritten"
    screen = [line.rstrip() for line in render(raw)]
    text = "\n".join(screen)
    assert "2 passed" in text, text
    for label in LABELS:
        final = [line for line in screen if line.startswith(f"modal-sandbox: {label} ")]
        assert len(final) == 1, text  # one line per sandbox, rewritten, not repeated
        assert re.fullmatch(
            rf"modal-sandbox: {re.escape(label)} created \S+s -> ready \S+s  sb-\S+", final[0]
        ), final[0]
    assert "creating..." not in text and "waiting for readiness" not in text
    # pytest's result letters still land on its own line
    assert any(re.match(r"test_progress_suite\.py \.+", line) for line in screen), text


@PYTEST_LAYER_ONLY
def test_xdist_controller_shows_the_workers_progress(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-n", "2")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    # every sandbox a worker started is shown by the controller, tagged with the worker
    started = re.findall(r"modal-sandbox: \[(gw\d)\] (.+?) created in \S+s: (sb-\S+)", out)
    assert {label for _, label, _ in started} >= set(LABELS)
    for worker, label, _ in started:
        assert re.search(
            rf"modal-sandbox: \[{worker}\] {re.escape(label)} "
            r"(ready in|not needed any more|attached)",
            out,
        ), out


class FakeReporter:
    """The part of pytest's terminal reporter the views use, writing to a string; ``result``
    is how pytest prints a result letter (a new line for its file when another line came)."""

    showfspath = True
    showlongtestinfo = False

    def __init__(self) -> None:
        self.data = "test_x.py "
        self.currentfspath: str | None = "test_x.py"

    def write(self, text: str) -> None:
        self.data += text

    def rewrite(self, line: str, erase: bool = False) -> None:
        self.write("\r" + line + (" " * (79 - len(line)) if erase else ""))

    def ensure_newline(self) -> None:
        if self.currentfspath:
            self.write("\n")
            self.currentfspath = None

    def write_line(self, line: str) -> None:
        self.ensure_newline()
        self.write(line + "\n")

    def flush(self) -> None:
        pass

    def write_fspath_result(self, nodeid: str, letter: str) -> None:
        if self.currentfspath is None:
            self.write("\n" + nodeid.split("::")[0] + " ")
            self.currentfspath = nodeid.split("::")[0]
        self.write(letter)

    def result(self, letter: str) -> None:  # what pytest writes for a test's result
        self.write(letter)


def _event(kind: str, t: float, sandbox_id: str = "", **more: Any) -> Event:
    return Event(kind, "main", sandbox_id, start="main:1", label="a", t=t, **more)


def _screen(reporter: FakeReporter) -> list[str]:
    lines = [line.rstrip() for line in render(reporter.data)]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def test_live_view_rewrites_a_status_line_and_leaves_one_line_per_sandbox() -> None:
    reporter = FakeReporter()
    view = LiveView(reporter, None)
    t = time.time()
    table = StartTable()
    with view.waiting("a"):
        view.show(table.feed(_event("requested", t)))  # type: ignore[arg-type]
        view.draw()
        view.show(table.feed(_event("created", t + 0.1, "sb-a")))  # type: ignore[arg-type]
        view.draw()
        view.show(table.feed(_event("ready", t + 0.5, "sb-a")))  # type: ignore[arg-type]
    view.pytest_writes("test_x.py::t")
    reporter.result(".")
    view.close()
    assert "\r" in reporter.data  # the status line was rewritten in place
    assert _screen(reporter) == [
        "test_x.py",
        "modal-sandbox: a created 0.10s -> ready 0.40s  sb-a",
        "test_x.py .",
    ], reporter.data


def test_live_view_clears_its_status_line_when_the_wait_ends_first() -> None:
    reporter = FakeReporter()
    view = LiveView(reporter, None)
    t = time.time()
    table = StartTable()
    with view.waiting("a"):
        view.show(table.feed(_event("requested", t)))  # type: ignore[arg-type]
        view.draw()  # "creating..." on the status line
    view.pytest_writes("test_x.py::t")
    reporter.result(".")
    view.show(table.feed(_event("failed", t + 1, error="boom")))  # type: ignore[arg-type]
    view.between_tests()
    view.close()
    assert _screen(reporter)[-2:] == ["test_x.py .", "modal-sandbox: a FAILED after 1.00s: boom"]
    assert "creating..." not in "\n".join(_screen(reporter))


def test_line_view_writes_each_step_once() -> None:
    reporter = FakeReporter()
    view = LineView(reporter, None, show_worker=True)
    t = time.time()
    table = StartTable()
    for event in (_event("requested", t), _event("attached", t + 0.2, "sb-a")):
        view.show(table.feed(event))  # type: ignore[arg-type]
        view.between_tests()
    view.between_tests()
    view.close()
    assert _screen(reporter) == [
        "test_x.py",
        "modal-sandbox: [main] a attached (shared, already ready): sb-a",
    ]
