"""Start the emulator CLI in a subprocess and talk to it: what the plugin and tests use."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import BackendUnavailable

URL_KEY = "MODAL_SERVER_URL"
CA_KEY = "MODAL_EMULATOR_CA_FILE"
LOG_TAIL = 64 * 1024


class EmulatorProcess:
    """``python -m pytest_modal_sandbox.emulator`` as a child process.

    ``start()`` returns once the emulator listens (its ``MODAL_SERVER_URL`` line was read);
    ``client_env()`` gives the variables the ``modal`` client needs; ``stop()`` sends SIGTERM,
    which makes the emulator terminate every sandbox it started, and waits for it.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token_id: str | None = None,
        token_secret: str | None = None,
        latency_ms: float = 0.0,
        start_latency_ms: float = 0.0,
        state_dir: str | os.PathLike[str] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        environments: Sequence[str] = (),
        images: str | None = None,
        host_images: Sequence[str] = (),
        fault_rate: float = 0.0,
        create_rate: float = 0.0,
        max_sandboxes: int = 0,
        seed: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        args = [sys.executable, "-m", "pytest_modal_sandbox.emulator", "--port", str(port)]
        if token_id is not None or token_secret is not None:
            args += ["--token-id", str(token_id), "--token-secret", str(token_secret)]
        if latency_ms:
            args += ["--latency-ms", str(latency_ms)]
        if start_latency_ms:
            args += ["--start-latency-ms", str(start_latency_ms)]
        if state_dir is not None:
            args += ["--state-dir", os.fspath(state_dir)]
        # Secret values go through a private file, never the command line (ps shows argv).
        self._secrets = {name: dict(values) for name, values in (secrets or {}).items()}
        for name in environments:
            args += ["--environment", name]
        if images is not None:  # host | pull | auto (the CLI's --images; default auto)
            args += ["--images", images]
        for pattern in host_images:
            args += ["--host-image", pattern]
        if fault_rate:
            args += ["--fault-rate", str(fault_rate)]
        if create_rate:
            args += ["--create-rate", str(create_rate)]
        if max_sandboxes:
            args += ["--max-sandboxes", str(max_sandboxes)]
        if seed is not None:
            args += ["--seed", str(seed)]
        self.args = [*args, *extra_args]
        self.token_id = token_id
        self.token_secret = token_secret
        self._env = dict(os.environ if env is None else env)
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.ca_file: Path | None = None
        self.info: dict[str, str] = {}
        self._tail = b""
        self._tail_lock = threading.Lock()
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> EmulatorProcess:
        if self._proc is not None:
            raise RuntimeError("the emulator process was already started")
        with tempfile.TemporaryDirectory(prefix="modal-emulator-secrets-") as tmp:
            args = list(self.args)
            if self._secrets:
                path = Path(tmp) / "secrets.json"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(self._secrets, f)
                args += ["--secrets-file", str(path)]
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # a Ctrl-C to our process group is ours to forward
            )
            try:
                self._read_banner()  # the file is read before the banner is printed
            except BaseException:
                self._kill()
                raise
        return self

    def _read_banner(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while URL_KEY not in self.info or CA_KEY not in self.info:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise BackendUnavailable(
                        f"the Modal emulator did not start within {self._startup_timeout:.0f} s"
                    )
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    self._proc.wait(5)
                    err = (
                        self._proc.stderr.read().decode(errors="replace")
                        if self._proc.stderr
                        else ""
                    )
                    raise BackendUnavailable(
                        f"the Modal emulator exited with code {self._proc.returncode} before it "
                        f"was ready: {err.strip() or '(no output)'}"
                    )
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    key, sep, value = line.decode(errors="replace").strip().partition("=")
                    if sep:
                        self.info[key] = value
        self.url = self.info[URL_KEY]
        self.ca_file = Path(self.info[CA_KEY])
        # Keep draining stderr so a chatty emulator never blocks on a full pipe.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        """Keep the last LOG_TAIL bytes of the emulator's stderr (see :meth:`log_tail`)."""
        proc = self._proc
        stream = None if proc is None else proc.stderr
        if stream is None:
            return
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # closed by stop()
                return
            if not chunk:
                return
            with self._tail_lock:
                self._tail = (self._tail + chunk)[-LOG_TAIL:]

    def _drainer_alive(self) -> bool:
        return self._drainer is not None and self._drainer.is_alive()

    def log_tail(self) -> str:
        """The end of the emulator's stderr (its warnings and errors), for error reports."""
        with self._tail_lock:
            return self._tail.decode(errors="replace")

    def client_env(
        self, token_id: str = "ak-emulator", token_secret: str = "as-emulator"
    ) -> dict[str, str]:
        """The environment variables that point the ``modal`` client at this emulator."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id or token_id,
            "MODAL_TOKEN_SECRET": self.token_secret or token_secret,
            "MODAL_DISABLE_API_PROXY": "1",
        }

    def _admin(self, method: str) -> Any:
        return call_admin(self.url, method)

    def stats(self) -> dict[str, Any]:
        """RPC counts so far: ``{"rpcs": {"control": {..}, "router": {..}}, "sandboxes": ..}``."""
        result: dict[str, Any] = self._admin("Stats")
        return result

    def reset_stats(self) -> None:
        self._admin("ResetStats")

    def end_sandbox(self, sandbox_id: str, how: str = "terminated") -> None:
        """End a sandbox from outside, as Modal can: ``terminated`` (the dashboard, another
        client), ``timeout`` (its timeout), ``idle_timeout`` (its idle timeout, reported as
        ``--idle-timeout-status`` says) or ``oom`` (the kernel's OOM killer)."""
        call_admin(self.url, "EndSandbox", json.dumps({"sandbox_id": sandbox_id, "how": how}))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (the emulator terminates its sandboxes first), return the exit code."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._drainer is not None:
            self._drainer.join(5)  # the pipe is at EOF now that the process is gone
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not (stream is proc.stderr and self._drainer_alive()):
                stream.close()
        return proc.returncode if proc.returncode is not None else -9

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def call_admin(url: str, method: str, argument: str | None = None) -> Any:
    """Call the emulator's admin service (``Stats``, ``ResetStats``, ``EndSandbox`` with a JSON
    ``argument``) at ``url``, synchronously.

    Runs on a private event loop in a helper thread, so it works from sync code and from code
    that is itself inside a running loop.
    """
    from urllib.parse import urlparse

    from google.protobuf import empty_pb2, wrappers_pb2  # type: ignore[import-untyped]

    parsed = urlparse(url)
    reply_type = wrappers_pb2.StringValue if method == "Stats" else empty_pb2.Empty

    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_unary_call(parsed, method, reply_type, argument)))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    reply = result[0]
    return json.loads(reply.value) if method == "Stats" else None


async def _unary_call(parsed: Any, method: str, reply_type: Any, argument: str | None) -> Any:
    import grpclib.const
    from google.protobuf import empty_pb2, wrappers_pb2
    from grpclib.client import Channel

    request = empty_pb2.Empty() if argument is None else wrappers_pb2.StringValue(value=argument)
    channel = Channel(parsed.hostname or "127.0.0.1", parsed.port or 80)
    try:
        async with channel.request(
            f"/pytest_modal_sandbox.emulator.Admin/{method}",
            grpclib.const.Cardinality.UNARY_UNARY,
            type(request),
            reply_type,
            timeout=10,
        ) as stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()
    finally:
        channel.close()
