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

from pytest_modal_sandbox.progress import View

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


def test_plain_lines_for_each_sandbox(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}")
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
    result = sbtester.runpytest_subprocess("--modal-sandbox=local", *args)
    result.assert_outcomes(passed=2)
    assert "created in" not in result.stdout.str()


def test_progress_on_a_tty_is_rewritten_in_place(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    raw = run_on_pty(
        [sys.executable, "-m", "pytest", f"--modal-sandbox={backend}", "-p", "no:cacheprovider"],
        sbtester.path,
    )
    assert re.search(r"\x1b\[\d+A", raw), "no line was rewritten in place"
    screen = render(raw)
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


def test_xdist_controller_shows_the_workers_progress(sbtester, backend):
    sbtester.makepyfile(test_progress_suite=SUITE)
    result = sbtester.runpytest_subprocess(f"--modal-sandbox={backend}", "-n", "2")
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


class Recorder:
    """A terminal that records what the view wrote (the protocol ``View`` draws on)."""

    def __init__(self) -> None:
        self.data = ""
        self.line = "test_x.py "

    def write(self, text: str, last_line: str, *, raw: bool) -> None:
        self.data += text
        self.line = last_line

    def current_line(self) -> str:
        return self.line

    def width(self) -> int:
        return 200

    def pytest_writes(self, text: str) -> None:  # what pytest itself prints
        self.data += text
        self.line = text.rsplit("\n", 1)[-1] if "\n" in text else self.line + text


def _event(kind: str, key: str, t: float, **extra: Any) -> dict[str, Any]:
    return {"k": kind, "key": key, "label": key, "worker": "main", "t": t, **extra}


def test_view_keeps_pytests_line_below_the_block() -> None:
    term = Recorder()
    view = View(term, in_place=True, always_safe=True)
    t = time.time()
    view.feed(_event("requested", "a", t))
    view.feed(_event("created", "a", t + 0.1, id="sb-a"))
    term.pytest_writes(".")  # a result letter, appended to pytest's line under the block
    view.feed(_event("ready", "a", t + 0.5, id="sb-a"))
    view.close()
    screen = render("test_x.py " + term.data)
    assert screen[-2:] == [
        "modal-sandbox: a created 0.10s -> ready 0.40s  sb-a",
        "test_x.py .",
    ], screen


def test_view_starts_a_new_block_after_pytest_began_a_new_line() -> None:
    term = Recorder()
    view = View(term, in_place=True, always_safe=True)
    t = time.time()
    view.feed(_event("requested", "a", t))
    term.pytest_writes("\n[gw0] PASSED test_x.py::test_1")  # the block scrolled up
    view.feed(_event("failed", "a", t + 1, error="boom"))
    view.close()
    screen = render("test_x.py " + term.data)
    assert screen[-2:] == [
        "modal-sandbox: a FAILED after 1.00s: boom",
        "[gw0] PASSED test_x.py::test_1",
    ], screen


def test_view_does_not_repeat_whole_lines_pytest_has_finished() -> None:
    term = Recorder()
    term.line = before = "[gw0] [ 50%] PASSED test_x.py::test_1"
    view = View(term, in_place=True, always_safe=True, complete_lines=True)
    t = time.time()
    view.feed(_event("requested", "a", t))
    view.feed(_event("attached", "a", t + 0.2, id="sb-a"))
    view.close()
    screen = render(before + term.data)
    assert screen == [
        "[gw0] [ 50%] PASSED test_x.py::test_1",
        "modal-sandbox: a attached (shared, already ready)  sb-a",
    ], screen
