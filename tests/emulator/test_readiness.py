"""Conformance: readiness probes (``readiness_probe=`` + ``wait_until_ready``)."""

from __future__ import annotations

from typing import Any

import pytest

modal = pytest.importorskip("modal")
from modal.exception import ConflictError  # noqa: E402
from modal.exception import TimeoutError as ModalTimeoutError  # noqa: E402

SERVER = "import http.server as h; h.HTTPServer(('127.0.0.1', 8000), h.SimpleHTTPRequestHandler)"


def test_tcp_probe_waits_for_a_listener(make_sandbox: Any) -> None:
    sb = make_sandbox(
        "sh",
        "-c",
        f'sleep 0.5; exec python3 -c "{SERVER}.serve_forever()"',
        readiness_probe=modal.Probe.with_tcp(8000, interval_ms=50),
    )
    sb.wait_until_ready(timeout=60)
    fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/').status)"
    assert sb.exec("python3", "-c", fetch).stdout.read() == "200\n"
    sb.wait_until_ready(timeout=5)  # once ready, stays ready


def test_exec_probe_and_its_timeout(make_sandbox: Any) -> None:
    sb = make_sandbox(readiness_probe=modal.Probe.with_exec("test", "-f", "/tmp/ready"))
    with pytest.raises(ModalTimeoutError):
        sb.wait_until_ready(timeout=1)
    sb.exec("touch", "/tmp/ready").wait()
    sb.wait_until_ready(timeout=60)


def test_tcp_probe_that_never_passes_times_out(make_sandbox: Any) -> None:
    sb = make_sandbox(readiness_probe=modal.Probe.with_tcp(9999))
    with pytest.raises(ModalTimeoutError):
        sb.wait_until_ready(timeout=1)


def test_wait_until_ready_needs_a_probe_and_a_running_sandbox(make_sandbox: Any) -> None:
    sb = make_sandbox()
    # Modal's words (its client's own tests match "readiness probe")
    with pytest.raises(ConflictError, match="does not have a readiness probe configured"):
        sb.wait_until_ready(timeout=5)
    dead = make_sandbox("true", readiness_probe=modal.Probe.with_tcp(8000))
    dead.wait()
    with pytest.raises(ConflictError):
        dead.wait_until_ready(timeout=5)
