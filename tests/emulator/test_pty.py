"""Conformance: ``exec(..., pty=True)`` and ``Sandbox.create(..., pty=True)`` get a terminal.

A real pseudo-terminal of the sandbox's own ``/dev/pts``, as on Modal: ``tty`` names it, the
process is on it for stdin, stdout and stderr (one stream; the terminal turns ``\\n`` into
``\\r\\n``), and its window has the client's size.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest

modal = pytest.importorskip("modal")
from modal_proto import api_pb2  # noqa: E402

TTY = re.compile(r"/dev/pts/\d+\r\n")


def test_exec_pty_is_a_terminal_of_the_sandbox(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("tty", pty=True)
    assert TTY.fullmatch(p.stdout.read())
    assert p.wait() == 0
    p = sb.exec(
        "sh", "-c", "test -t 0 && test -t 1 && test -t 2 && echo on; echo err >&2", pty=True
    )
    assert p.stdout.read() == "on\r\nerr\r\n"  # stderr is the same terminal
    assert p.stderr.read() == ""
    assert p.wait() == 0
    assert sb.exec("tty").stdout.read() == "not a tty\n"  # without pty: pipes


def test_exec_pty_stdin_and_window_size(make_sandbox: Any) -> None:
    sb = make_sandbox()
    p = sb.exec("sh", "-c", "read line; echo got:$line; echo term:$TERM", pty=True)
    p.stdin.write(b"hello\n")
    p.stdin.drain()
    assert p.stdout.read() == "hello\r\ngot:hello\r\nterm:xterm\r\n"  # the terminal echoes
    assert p.wait() == 0
    p = sb.exec("cat", pty=True)
    p.stdin.write(b"x\n")
    p.stdin.write_eof()  # ^D on the terminal
    p.stdin.drain()
    assert p.stdout.read() == "x\r\nx\r\n"
    assert p.wait() == 0
    info = api_pb2.PTYInfo(enabled=True, winsz_rows=33, winsz_cols=101, env_term="vt100")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pty_info= is deprecated: the client's window size
        p = sb.exec("sh", "-c", "stty size; echo $TERM", pty_info=info)
    assert p.stdout.read() == "33 101\r\nvt100\r\n"


def test_create_pty_runs_the_command_on_a_terminal(make_sandbox: Any, client: Any) -> None:
    sb = make_sandbox("sh", "-c", "tty; read x; echo got:$x; exit 3", pty=True)
    sb.stdin.write(b"abc\n")
    sb.stdin.drain()
    out = sb.stdout.read()
    # the terminal echoes the typed line whenever it arrives: before or after tty's answer
    assert re.fullmatch(TTY.pattern + "got:abc\r\n", out.replace("abc\r\n", "", 1))
    assert sb.stderr.read() == ""
    assert sb.wait() is None and sb.returncode == 3  # its exit ends the sandbox
    with pytest.raises(ValueError):  # stdin after the end
        sb.stdin.write(b"more")
        sb.stdin.drain()
    fresh = modal.Sandbox.from_id(sb.object_id, client=client)
    assert fresh.stdout.read() == out
    assert [e.message for e in fresh.logs.tail(10)][-1] == "got:abc\r\n"


def test_create_pty_without_a_command_keeps_running(make_sandbox: Any) -> None:
    sb = make_sandbox(pty=True)
    assert sb.poll() is None
    assert TTY.fullmatch(sb.exec("tty", pty=True).stdout.read())
    sb.terminate()
    assert sb.wait(raise_on_termination=False) is None and sb.returncode == 137
