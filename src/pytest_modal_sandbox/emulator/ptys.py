"""Pseudo-terminals for ``exec(..., pty=True)`` and ``Sandbox.create(..., pty=True)``.

On Modal a ``pty`` process runs on a terminal of its container: ``tty`` names it, ``isatty``
is true, the window size is the client's, stdout and stderr are one stream.  The pty is taken
from the *sandbox's own* devpts instance (the runtime gives every sandbox a fresh ``/dev`` with
a private ``/dev/pts``), opened from the host through ``/proc/<PID 1>/root/dev/pts/ptmx``, and
the terminal end is handed over with ``TIOCGPTPEER``: inside the sandbox it is ``/dev/pts/N``
of its own ``/dev/pts``.  Where that cannot be opened, a host pty stands in (still a terminal,
but ``ttyname`` finds no name for it in the sandbox).

The process gets the terminal as stdin/stdout/stderr and as its controlling terminal
(:func:`make_controlling`, run in the child after ``setsid``); the emulator keeps the master:
what the process writes is read from it (:func:`pump`), the client's stdin is written to it,
and stdin EOF is the terminal's end-of-file character.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
from dataclasses import dataclass

from .stdio import OutputBuffer

TIOCGPTPEER = 0x5441  # Linux 4.13+: open the peer (terminal end) of a pty master
TIOCSPTLCK = 0x40045431  # unlockpt(); not in Python's termios
EOF_CHAR = b"\x04"  # VEOF (^D): what closing stdin means on a terminal
READ = 65536


@dataclass
class Pty:
    master: int  # kept by the emulator
    terminal: int  # the process's stdin/stdout/stderr; closed once it is spawned


def open_pty(init_pid: int | None, rows: int = 0, cols: int = 0) -> Pty:
    """A pty of the sandbox whose PID 1 is ``init_pid`` (else of the host), sized rows x cols."""
    pty = _sandbox_pty(init_pid) if init_pid is not None else None
    if pty is None:
        master, terminal = os.openpty()
        pty = Pty(master, terminal)
    if rows > 0 and cols > 0:
        fcntl.ioctl(pty.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.set_inheritable(pty.master, False)
    return pty


def _sandbox_pty(init_pid: int) -> Pty | None:
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
    try:
        master = os.open(f"/proc/{init_pid}/root/dev/pts/ptmx", flags)
    except OSError:
        return None
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        terminal = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        os.close(master)
        return None
    return Pty(master, terminal)


def make_controlling() -> None:
    """In the child, after ``setsid()``: its stdin (the terminal) becomes its controlling tty."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def pump(master: int, buffer: OutputBuffer) -> None:
    """Copy what the terminal's processes write into ``buffer`` until every terminal end is
    closed (the master then reads EIO); ``buffer`` is closed at the end."""
    loop = asyncio.get_running_loop()
    os.set_blocking(master, False)
    readable = asyncio.Event()
    loop.add_reader(master, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(master, READ)
            except BlockingIOError:
                continue
            except OSError:  # EIO: no process has the terminal open any more
                return
            if not chunk:
                return
            buffer.append(chunk)
    finally:
        loop.remove_reader(master)
        buffer.close()


async def write(master: int, data: bytes) -> None:
    """Write all of ``data`` to the terminal's input (non-blocking master: wait when full)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(master, view)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        view = view[n:]


def close(master: int) -> None:
    with contextlib.suppress(OSError):
        os.close(master)
