"""The ``local`` backend: sandboxes on this Linux machine, through the bubblewrap runtime.

Secrets given as dicts are merged into the environment in Modal's order (secrets in order,
``env`` last).  ``modal.Secret`` objects cannot be resolved without Modal and are refused.
Endpoints are plain ``http://127.0.0.1:<port>`` listeners for every port kind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import ExecTimeout, SandboxGone, SpecError
from ..spec import SandboxSpec
from . import Endpoint, NameTaken, RawExec, SandboxInfo

if TYPE_CHECKING:
    from ..runtime import LocalRuntime, LocalSandbox

__all__ = ["LocalBackend", "LocalHandle"]


class LocalHandle:
    """A runtime sandbox seen through the backend protocol."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self._sb = sandbox
        self.id = sandbox.id

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> RawExec:
        from ..runtime import SandboxNotFound

        try:
            out = self._sb.exec(argv, env=env, workdir=workdir, stdin=stdin, timeout=timeout)
        except SandboxNotFound as exc:
            raise SandboxGone(str(exc)) from exc
        if out.timed_out:
            raise ExecTimeout(
                f"command {' '.join(argv)!r} in sandbox {self.id} ran past its timeout "
                f"of {timeout:g}s and was killed",
                stdout=out.stdout,
                stderr=out.stderr,
            )
        return RawExec(out.returncode, out.stdout, out.stderr)

    def endpoint(self, port: int, kind: str) -> Endpoint:
        host, host_port = self._sb.tunnel(port)
        return Endpoint(port, kind, f"http://{host}:{host_port}", host, host_port)

    def finished(self) -> str | None:
        status = self._sb.poll()
        if status is None:
            return None
        code = "" if status.exitcode is None else f" (exit code {status.exitcode})"
        return f"{status.kind}{code}"

    def terminate(self, *, wait: bool = False) -> None:
        self._sb.terminate(wait=wait)

    def release(self) -> None:
        """Nothing to drop: this process's tunnel listeners end with the sandbox or process."""

    def keep(self, seconds: float) -> None:
        self._sb.detach_owner()


class LocalBackend:
    """Sandboxes as bubblewrap process trees; see :mod:`pytest_modal_sandbox.runtime`."""

    name = "local"

    def __init__(
        self,
        *,
        app: str = "pytest-modal-sandbox",
        owner_lock: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        **_ignored: object,
    ) -> None:
        from ..runtime import LocalRuntime

        LocalRuntime.check()
        self.app = app
        self.owner_lock = None if owner_lock is None else str(owner_lock)
        self.runtime: LocalRuntime = LocalRuntime(state_dir)

    def header(self) -> str:
        return "local (bubblewrap); images are mapped to the host filesystem, read-only"

    def create(
        self,
        spec: SandboxSpec,
        *,
        tags: Mapping[str, str],
        name: str | None = None,
        shared: bool = False,
    ) -> LocalHandle:
        from ..runtime import SandboxConfig

        env: dict[str, str] = {}
        for i, secret in enumerate(spec.secrets):
            if not isinstance(secret, Mapping):
                raise SpecError(
                    f"secrets[{i}]: a modal.Secret cannot be resolved by the local backend; "
                    "pass the values as a dict (e.g. {'KEY': os.environ['KEY']})"
                )
            env.update(secret)
        env.update(spec.env)
        config = SandboxConfig(
            env=env,
            workdir=spec.workdir,
            timeout=float(spec.timeout),
            idle_timeout=None if spec.idle_timeout is None else float(spec.idle_timeout),
            ports=spec.ports,
            app=self.app,
            name=name,
            tags=dict(tags),
            owner_lock=self.owner_lock if shared else None,
        )
        from ..runtime import NameTaken as RuntimeNameTaken

        try:
            return LocalHandle(self.runtime.create(config))
        except RuntimeNameTaken as exc:
            raise NameTaken(str(exc)) from exc

    def attach(self, sandbox_id: str) -> LocalHandle:
        return LocalHandle(self.runtime.get(sandbox_id))

    def from_name(self, name: str) -> LocalHandle | None:
        from ..runtime import SandboxNotFound

        try:
            return LocalHandle(self.runtime.from_name(self.app, name))
        except SandboxNotFound:
            return None

    def list(self, tags: Mapping[str, str]) -> list[SandboxInfo]:
        return [
            SandboxInfo(sb.id, sb.tags(), sb.name, sb.created_at)
            for sb in self.runtime.list(tags=tags)
        ]

    def terminate(self, sandbox_id: str) -> None:
        from ..runtime import SandboxNotFound

        try:
            self.runtime.get(sandbox_id).terminate()
        except SandboxNotFound:
            pass

    def close(self) -> None:
        self.runtime.close()
