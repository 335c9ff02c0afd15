"""The emulator as a program: banner, flags, token check, stats, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from emulator_helpers import no_process_mentions, open_client, processes_mentioning

modal = pytest.importorskip("modal")
from modal.exception import AuthError, NotFoundError  # noqa: E402

from pytest_modal_sandbox.emulator import EmulatorProcess  # noqa: E402
from pytest_modal_sandbox.runtime import LocalRuntime  # noqa: E402

pytestmark = pytest.mark.usefixtures("runtime_available")


def emulator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest_modal_sandbox.emulator", *args]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_stop_terminates_every_sandbox_and_leaves_no_process(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    state = tmp_path / "state"
    stats_file = tmp_path / "stats.json"
    proc = subprocess.Popen(
        emulator_cmd("--state-dir", str(state), "--stats-file", str(stats_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode().strip()
        assert first.startswith("MODAL_SERVER_URL=http://127.0.0.1:")
        ca_line = proc.stdout.readline().decode().strip()
        assert ca_line.startswith("MODAL_EMULATOR_CA_FILE=")
        assert Path(ca_line.split("=", 1)[1]).is_file()
        client = open_client(first.split("=", 1)[1])
        try:
            app = modal.App.lookup("cli-stop", create_if_missing=True, client=client)
            sb = modal.Sandbox.create(app=app, client=client)
            sb.exec("sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &").wait()
            modal.Sandbox.create("sleep", "300", app=app, client=client)
            assert len(LocalRuntime(state / "sandboxes").list()) == 2
        finally:
            client.__exit__(None, None, None)
        proc.send_signal(stop_signal)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert LocalRuntime(state / "sandboxes").list() == []
    assert no_process_mentions(str(state))
    stats = json.loads(stats_file.read_text())
    assert stats["rpcs"]["control"]["SandboxCreateV2"] == 2
    assert stats["sandboxes"] == {"created": 2, "running": 0}


def test_token_check(tmp_path: Path) -> None:
    with EmulatorProcess(token_id="ak-right", token_secret="as-right", state_dir=tmp_path) as emu:
        wrong = open_client(emu.url, "ak-right", "as-wrong")
        try:
            with pytest.raises(AuthError, match="MODAL_TOKEN_ID"):
                modal.App.lookup("tokens", create_if_missing=True, client=wrong)
        finally:
            wrong.__exit__(None, None, None)
        right = open_client(emu.url, "ak-right", "as-right")
        try:
            app = modal.App.lookup("tokens", create_if_missing=True, client=right)
            sb = modal.Sandbox.create(app=app, client=right)
            assert sb.exec("echo", "ok").stdout.read() == "ok\n"
            sb.terminate()
        finally:
            right.__exit__(None, None, None)


def test_client_configured_only_by_environment_variables(tmp_path: Path) -> None:
    """The real client, untouched: MODAL_SERVER_URL + token variables, Client.from_env()."""
    script = textwrap.dedent(
        """
        import modal
        app = modal.App.lookup("env-only", create_if_missing=True)
        sb = modal.Sandbox.create("echo", "from-env", app=app)
        sb.wait()
        print(sb.stdout.read().strip(), sb.returncode)
        """
    )
    config = tmp_path / "modal.toml"
    config.touch()
    with EmulatorProcess(state_dir=tmp_path / "state") as emu:
        env = {**os.environ, **emu.client_env(), "MODAL_CONFIG_PATH": str(config)}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, timeout=120, check=False
        )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "from-env 0"


def test_environments_must_be_declared(tmp_path: Path) -> None:
    with EmulatorProcess(state_dir=tmp_path, environments=["dev"]) as emu:
        client = open_client(emu.url)
        try:
            dev = modal.App.lookup(
                "e", create_if_missing=True, environment_name="dev", client=client
            )
            assert dev.app_id.startswith("ap-")
            with pytest.raises(NotFoundError, match="--environment"):
                modal.App.lookup(
                    "e", create_if_missing=True, environment_name="prod", client=client
                )
        finally:
            client.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-id", "only-id"], "--token-id and --token-secret"),
        (["--secret", "no-equals"], "NAME=KEY=VALUE"),
        (["--host", "0.0.0.0"], "invalid choice"),
        (["--latency-ms", "-5"], "--latency-ms must be >= 0"),
        (["--port", "70000"], "--port must be 0-65535"),
        (["--start-latency-ms", "-1"], "--start-latency-ms must be >= 0"),
        (["--fault-rate", "1.5"], "--fault-rate must be between 0 and 1"),
        (["--create-rate", "-2"], "--create-rate must be >= 0"),
        (["--max-sandboxes", "-1"], "--max-sandboxes must be >= 0"),
        (["--seed", "x"], "--seed: invalid int value"),
        (["--secrets-file", "/nonexistent/secrets.json"], "--secrets-file"),
    ],
)
def test_bad_flags_are_reported_clearly(args: list[str], message: str) -> None:
    out = subprocess.run(emulator_cmd(*args), capture_output=True, timeout=60, check=False)
    assert out.returncode != 0
    assert message in out.stderr.decode()
    assert b"Traceback" not in out.stderr


def test_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"from-file": {"FILE_KEY": "file-value"}}))
    with EmulatorProcess(
        state_dir=tmp_path / "s", extra_args=["--secrets-file", str(secrets)]
    ) as emu:
        client = open_client(emu.url)
        try:
            app = modal.App.lookup("secrets", create_if_missing=True, client=client)
            sb = modal.Sandbox.create(
                app=app, client=client, secrets=[modal.Secret.from_name("from-file")]
            )
            assert sb.exec("printenv", "FILE_KEY").stdout.read() == "file-value\n"
            sb.terminate()
        finally:
            client.__exit__(None, None, None)


def test_rpc_counts_of_a_function_scoped_lifecycle(tmp_path: Path) -> None:
    """App.lookup once, then create -> exec -> terminate costs exactly these round trips."""
    with EmulatorProcess(state_dir=tmp_path) as emu:
        client = open_client(emu.url)
        try:
            app = modal.App.lookup("counts", create_if_missing=True, client=client)
            image = modal.Image.debian_slim()
            modal.Sandbox.create(app=app, image=image, client=client).terminate()  # warm up
            emu.reset_stats()
            sb = modal.Sandbox.create(app=app, image=image, client=client)
            assert sb.exec("true").wait() == 0
            sb.terminate()
            stats: dict[str, Any] = emu.stats()["rpcs"]
        finally:
            client.__exit__(None, None, None)
    assert stats["control"] == {"SandboxCreateV2": 1, "SandboxTerminateV2": 1}
    assert stats["router"] == {"TaskExecStart": 1, "TaskExecWait": 1}


def test_stop_answers_clients_that_are_waiting(tmp_path: Path) -> None:
    """Blocked wait()/exec wait()/output reads get terminated/137/EOF, not a dead socket."""
    import threading

    from modal.exception import SandboxTerminatedError

    emu = EmulatorProcess(state_dir=tmp_path).start()
    client = open_client(emu.url)
    results: dict[str, Any] = {}
    try:
        app = modal.App.lookup("stop-waiters", create_if_missing=True, client=client)
        sb = modal.Sandbox.create(app=app, client=client)
        chatty = modal.Sandbox.create("sh", "-c", "echo hi; sleep 300", app=app, client=client)
        proc = sb.exec("sleep", "300")

        def wait_sandbox() -> None:
            try:
                sb.wait()
                results["wait"] = "returned"
            except SandboxTerminatedError:
                results["wait"] = "terminated"

        def wait_exec() -> None:
            results["exec"] = proc.wait()

        def read_output() -> None:
            results["read"] = chatty.stdout.read()

        threads = [threading.Thread(target=f) for f in (wait_sandbox, wait_exec, read_output)]
        for t in threads:
            t.start()
        for _ in range(300):  # until all three are blocked in the emulator
            if emu.stats()["inflight"] >= 3:
                break
            time.sleep(0.05)
        assert emu.stop() == 0
        for t in threads:
            t.join(60)
    finally:
        emu.stop()
        client.__exit__(None, None, None)
    assert results == {"wait": "terminated", "exec": 137, "read": "hi\n"}


def test_a_missing_runtime_is_a_clear_start_error(tmp_path: Path) -> None:
    from pytest_modal_sandbox.errors import BackendUnavailable

    emu = EmulatorProcess(state_dir=tmp_path, env={**os.environ, "PATH": str(tmp_path)})
    with pytest.raises(BackendUnavailable, match="bubblewrap"):
        emu.start()
    assert emu.stop() == 1


def test_sigkilled_emulator_takes_its_sandboxes_with_it(tmp_path: Path) -> None:
    """The runtime ties each sandbox to the emulator process: no orphan survives a SIGKILL."""
    emu = EmulatorProcess(state_dir=tmp_path).start()
    client = open_client(emu.url)
    try:
        app = modal.App.lookup("sigkill", create_if_missing=True, client=client)
        sb = modal.Sandbox.create(app=app, client=client)
        sb.exec("sh", "-c", "setsid sleep 3131 >/dev/null 2>&1 &").wait()  # a daemon
        assert processes_mentioning("sleep 3131")
        assert emu.pid is not None
        os.kill(emu.pid, signal.SIGKILL)
        assert emu.stop() == -signal.SIGKILL
    finally:
        client.__exit__(None, None, None)
        emu.stop()
    deadline = time.monotonic() + 30

    def left() -> list[tuple[int, str]]:
        return processes_mentioning(str(tmp_path)) + processes_mentioning("sleep 3131")

    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == []


def test_log_tail_keeps_the_emulators_stderr(tmp_path: Path) -> None:
    emu = EmulatorProcess(state_dir=tmp_path).start()
    client = open_client(emu.url)
    try:
        app = modal.App.lookup("log-tail", create_if_missing=True, client=client)
        modal.Sandbox.create(app=app, client=client)
    finally:
        client.__exit__(None, None, None)
        assert emu.stop() == 0
    tail = emu.log_tail()
    assert f"serving Modal's sandbox API at {emu.url}" in tail
    assert "terminated 1 running sandbox(es)" in tail
