"""The filesystem tool's JSON contract, run directly on the host (no sandbox needed).

The conformance tests run the same file inside sandboxes through the real client; these pin
down every operation and error kind quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_modal_sandbox.emulator import fs_tools

SCRIPT = fs_tools.__file__


def run(command: dict[str, Any], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-I", "-S", SCRIPT, json.dumps(command)],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


def error_kind(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1, proc
    payload = json.loads(proc.stderr)
    assert payload["version"] == 1 and payload["message"]
    return str(payload["error_kind"])


def test_write_then_read_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.bin"
    data = os.urandom(300_000)
    assert run({"WriteFile": {"path": str(target)}}, data).returncode == 0
    assert target.read_bytes() == data
    read = run({"ReadFile": {"path": str(target)}})
    assert read.returncode == 0 and read.stdout == data


def test_read_errors(tmp_path: Path) -> None:
    assert error_kind(run({"ReadFile": {"path": str(tmp_path / "nope")}})) == "NotFound"
    assert error_kind(run({"ReadFile": {"path": str(tmp_path)}})) == "IsDirectory"


def test_write_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert error_kind(run({"WriteFile": {"path": str(tmp_path)}})) == "IsDirectory"
    under_file = tmp_path / "file" / "child"
    assert error_kind(run({"WriteFile": {"path": str(under_file)}})) == "NotDirectory"


def test_list_and_stat(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hello")
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to("f")
    proc = run({"ListFiles": {"path": str(tmp_path)}})
    assert proc.returncode == 0
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert {n: e["type"] for n, e in entries.items()} == {
        "d": "directory",
        "f": "file",
        "l": "symlink",
    }
    assert entries["f"]["size"] == 5 and entries["f"]["path"] == str(tmp_path / "f")
    assert entries["l"]["symlink_target"] == "f"
    assert len(entries["f"]["permissions"]) == 4
    stat = json.loads(run({"Stat": {"path": str(tmp_path / "f")}}).stdout)
    assert stat["name"] == "f" and stat["type"] == "file" and stat["modified_time"] > 0
    assert error_kind(run({"ListFiles": {"path": str(tmp_path / "f")}})) == "NotDirectory"
    assert error_kind(run({"ListFiles": {"path": str(tmp_path / "x")}})) == "NotFound"
    assert error_kind(run({"Stat": {"path": str(tmp_path / "x")}})) == "NotFound"


def test_make_directory(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b"
    assert run({"MakeDirectory": {"path": str(deep), "parents": True}}).returncode == 0
    assert run({"MakeDirectory": {"path": str(deep), "parents": True}}).returncode == 0
    assert deep.is_dir()
    orphan = tmp_path / "x" / "y"
    assert error_kind(run({"MakeDirectory": {"path": str(orphan), "parents": False}})) == (
        "NotFound"
    )
    assert error_kind(run({"MakeDirectory": {"path": str(deep), "parents": False}})) == (
        "PathAlreadyExists"
    )


def test_remove(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    kind = error_kind(run({"Remove": {"path": str(tmp_path / "d"), "recursive": False}}))
    assert kind == "DirectoryNotEmpty"
    assert run({"Remove": {"path": str(tmp_path / "d"), "recursive": True}}).returncode == 0
    assert not (tmp_path / "d").exists()
    missing = {"Remove": {"path": str(tmp_path / "d"), "recursive": False}}
    assert error_kind(run(missing)) == "NotFound"


def test_bad_commands_are_reported_not_crashed() -> None:
    assert error_kind(run({"Frobnicate": {"path": "/"}})) == "InvalidCommand"
    assert error_kind(run({"ReadFile": {"path": "relative"}})) == "InvalidCommand"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "{not json"], capture_output=True, timeout=30, check=False
    )
    assert error_kind(proc) == "InvalidCommand"


def test_watch_reports_changes_until_stdin_closes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", SCRIPT, json.dumps({"Watch": {"path": str(tmp_path)}})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        # Keep creating until the watcher has taken its first snapshot and reports one.
        for i in range(200):
            (tmp_path / f"new{i}").write_text("x")
            line = _readline_with_timeout(proc, 0.2)
            if line:
                event = json.loads(line)
                assert event["event_type"] == "Create"
                assert event["paths"][0].startswith(str(tmp_path))
                break
        else:
            pytest.fail("no watch event")
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            return proc.stdout.readline()
    return b""
