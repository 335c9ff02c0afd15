"""Conformance: ``Sandbox.logs`` (``AppFetchLogs`` / ``AppCountLogs``) of the entrypoint."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

modal = pytest.importorskip("modal")


def test_logs_of_a_finished_sandbox_from_a_fresh_handle(make_sandbox: Any, client: Any) -> None:
    sb = make_sandbox("sh", "-c", "echo one; echo two >&2; sleep 0.3; echo three; printf tail")
    sb.wait()
    fresh = modal.Sandbox.from_id(sb.object_id, client=client)
    entries = list(fresh.logs.tail(10))
    assert [(e.source, e.message) for e in entries if e.source == "stdout"] == [
        ("stdout", "one\n"),
        ("stdout", "three\n"),
        ("stdout", "tail"),  # the last line, without a newline, is complete at the end
    ]
    assert [(e.source, e.message) for e in entries if e.source == "stderr"] == [("stderr", "two\n")]
    times = [e.timestamp for e in entries]
    assert times == sorted(times)
    assert all(e.timestamp > datetime.now(timezone.utc) - timedelta(minutes=5) for e in entries)
    assert [e.message for e in fresh.logs.tail(1)] == ["tail"]
    assert [e.message for e in fresh.logs.tail(10, source="stderr")] == ["two\n"]


def test_logs_fetch_by_time_and_text(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "for i in 1 2 3; do echo line$i; done; echo other")
    sb.wait()
    since = datetime.now(timezone.utc) - timedelta(minutes=10)
    fetched = [e.message for e in sb.logs.fetch(since=since)]
    assert fetched == ["line1\n", "line2\n", "line3\n", "other\n"]
    assert [e.message for e in sb.logs.fetch(since=since, search_text="other")] == ["other\n"]
    future = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert list(sb.logs.fetch(since=future, until=future + timedelta(minutes=1))) == []


def test_exec_output_is_not_in_the_logs(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", "echo entry; sleep 300")
    assert sb.exec("echo", "from-exec").stdout.read() == "from-exec\n"
    sb.terminate(wait=True)
    assert [e.message for e in sb.logs.tail(10)] == ["entry\n"]
