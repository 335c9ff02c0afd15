"""The local runtime's walls through pytest itself, on every offline backend.

A small suite, run by an inner pytest with ``--modal-sandbox=<backend>`` (host-image mode, as
the ini of ``sbtester`` sets), tries escapes from a ``sandbox`` fixture: the emulator's
sandboxes and execs are confined exactly like the local backend's.  The outer test checks the
host afterwards.
"""

from __future__ import annotations

import os
import uuid

import pytest

SUITE = r"""
import os

import pytest

pytestmark = pytest.mark.sandbox(timeout=120)
MARK = os.environ["PMS_WALLS_MARK"]
PANIC = open("/proc/sys/kernel/panic").read().strip()  # written back as it is: harmless


def sh(sandbox, script):
    return sandbox.exec("sh", "-c", script)


def test_escapes_fail(sandbox):
    assert sh(sandbox, "mount -o remount,rw /").returncode != 0
    assert sh(sandbox, "mount -t tmpfs none /mnt").returncode != 0
    assert sh(sandbox, "mknod /tmp/disk b 8 0").returncode != 0
    assert sh(sandbox, "unshare -Urm true").returncode != 0
    assert sh(sandbox, f"echo {PANIC} > /proc/sys/kernel/panic").returncode != 0
    assert sh(sandbox, "ls /proc").stdout.split().count("1") == 1  # its own pid namespace


def test_the_host_is_the_system_without_the_user(sandbox):
    assert sh(sandbox, "ls -A /root /home").stdout == "/home:\n\n/root:\n"
    assert sh(sandbox, "test -e /etc/passwd").returncode == 0


def test_the_root_is_writable_and_its_own(sandbox):
    assert sh(sandbox, f"echo x > /etc/{MARK} && cat /etc/{MARK}").stdout == "x\n"
    assert not os.path.exists(f"/etc/{MARK}")


def test_an_exec_carries_the_walls(sandbox):
    status = sh(sandbox, "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status").stdout
    assert status.split() == ["NoNewPrivs:", "1", "Seccomp:", "2"]
    assert sh(sandbox, "cat /proc/self/uid_map").stdout.split() == ["0", "0", "4294967295"]
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the walls as root (CI runs as root)")
def test_walls_through_the_plugin(sbtester, backend, monkeypatch):
    mark = f"pms-walls-{uuid.uuid4().hex}"
    monkeypatch.setenv("PMS_WALLS_MARK", mark)
    sbtester.makepyfile(test_walls_suite=SUITE)
    result = sbtester.runpytest(f"--modal-sandbox={backend}", "-v", "-rfE")
    result.assert_outcomes(passed=4)
    assert not os.path.exists(f"/etc/{mark}")
