"""Conformance of the client's V1 sandbox path (``gpu=``, ``MODAL_SANDBOX_V2=0``), which the
emulator also serves: ``SandboxCreate``, ``SandboxGetTaskId``, ``SandboxGetLogs``,
``SandboxStdinWrite`` plus the shared exec/lifecycle RPCs.  GPUs are not emulated: a ``gpu=``
request only selects the V1 protocol."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

modal = pytest.importorskip("modal")


@pytest.fixture
def v1_calls(emulator: Any) -> Iterator[None]:
    """Fails the test unless its sandboxes really went through the V1 RPCs."""
    before = emulator.stats()["rpcs"]["control"].get("SandboxCreate", 0)
    yield
    assert emulator.stats()["rpcs"]["control"].get("SandboxCreate", 0) > before


@pytest.mark.usefixtures("v1_calls")
def test_v1_entrypoint_stdio_and_exit(make_sandbox: Any) -> None:
    sb = make_sandbox("sh", "-c", 'echo hi; read x; echo "got $x" >&2; exit 4', gpu="any")
    sb.stdin.write(b"abc\n")
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    assert sb.returncode == 4
    assert sb.stdout.read() == "hi\n"
    assert sb.stderr.read() == "got abc\n"


@pytest.mark.usefixtures("v1_calls")
def test_v1_exec_env_secrets_and_terminate(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
    sb = make_sandbox(env={"E": "env"}, secrets=[modal.Secret.from_dict({"E": "sec", "S": "sec"})])
    assert sb.exec("sh", "-c", "echo $E $S").stdout.read() == "env sec\n"
    sb.terminate()
    with pytest.raises(modal.exception.SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137


@pytest.mark.usefixtures("v1_calls")
def test_v1_fast_exit_and_unicode_output(make_sandbox: Any) -> None:
    sb = make_sandbox("printf", "h\u00e9llo \u2603", gpu="any")
    sb.wait()
    assert sb.returncode == 0
    assert sb.stdout.read() == "h\u00e9llo \u2603"


@pytest.mark.usefixtures("v1_calls")
def test_v1_output_split_inside_characters_is_reassembled(make_sandbox: Any) -> None:
    script = "import sys; sys.stdout.write('\\u2603' * 50000)"  # 150 kB of 3-byte characters
    sb = make_sandbox("python3", "-c", script, gpu="any")
    sb.wait()
    assert sb.stdout.read() == "\u2603" * 50000


@pytest.mark.usefixtures("v1_calls")
def test_v1_pty_info_runs_the_entrypoint_on_a_terminal(make_sandbox: Any) -> None:
    """The deprecated ``pty_info=`` selects V1; its output comes through ``SandboxGetLogs``."""
    import warnings

    from modal_proto import api_pb2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pty_info= is deprecated
        sb = make_sandbox("sh", "-c", "tty; exit 4", pty_info=api_pb2.PTYInfo(enabled=True))
    assert sb.stdout.read().startswith("/dev/pts/")
    sb.wait()
    assert sb.returncode == 4
