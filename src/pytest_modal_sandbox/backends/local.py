"""The ``local`` backend: sandboxes on this Linux machine, through the bubblewrap runtime.

Images: with ``local_images="pull"`` (the default) an image reference is pulled, verified and
cached (:mod:`pytest_modal_sandbox.images`) and the sandbox runs in it, with the image's env
and workdir, as on Modal.  ``"host"`` maps every image to a private view of the host
filesystem (see :mod:`pytest_modal_sandbox.runtime.hostview`);
``host_images`` patterns map just those images; ``"auto"`` pulls and falls back to the host
when an image cannot be had (with a warning).  A spec without an image runs on the host.

Secrets given as dicts are merged into the environment in Modal's order (secrets in order,
``env`` last).  ``modal.Secret`` objects cannot be resolved without Modal and are refused.
Endpoints are plain ``http://127.0.0.1:<port>`` listeners for every port kind; peers (what
another sandbox connects to) the same listeners on this machine's own non-loopback address.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExecTimeout, SandboxError, SandboxGone, SpecError
from ..snapshot import Snapshot, memory_refused
from .protocol import Ending, Endpoint, NameTaken, RawExec, SandboxInfo

if TYPE_CHECKING:
    from ..authproxy import ConnectToken
    from ..images import ImageRoot
    from ..images.manifest import ImageConfig
    from ..runtime import LocalRuntime, LocalSandbox
    from ..spec import SandboxSpec

__all__ = ["LOCAL_IMAGE_MODES", "LocalBackend", "LocalHandle", "LocalImages"]


LOCAL_IMAGE_MODES = ("pull", "host", "auto")  # the ways this backend provides an image


class LocalImageFallback(UserWarning):
    """``local_images="auto"``: an image could not be had and runs on the host instead."""


class LocalImages:
    """Decides what root a local sandbox runs in: the pulled image, or the host."""

    def __init__(self, mode: str = "pull", host_images: Sequence[str] = ()) -> None:
        if mode not in LOCAL_IMAGE_MODES:
            raise ValueError(f"local_images must be one of {', '.join(LOCAL_IMAGE_MODES)}")
        self.mode = mode
        self.host_images = tuple(host_images)
        self._store: object = None
        self._fallbacks: set[str] = set()

    def describe(self) -> str:
        if self.mode == "host":
            return "images are mapped to the host filesystem (a private view of it)"
        text = "images are pulled and cached"
        if self.mode == "auto":
            text += " (the host filesystem when one cannot be had)"
        if self.host_images:
            text += f"; mapped to the host: {', '.join(self.host_images)}"
        return text

    def on_host(self, image: object) -> bool:
        if not isinstance(image, str) or self.mode == "host":
            return True
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.host_images)

    def resolve(self, image: object) -> ImageRoot | None:
        """The unpacked image to run in, or None for the host filesystem."""
        if self.on_host(image):
            return None
        from ..images import ImageError, ImageStore

        if self._store is None:
            self._store = ImageStore()
        assert isinstance(image, str) and isinstance(self._store, ImageStore)
        try:
            return self._store.get(image)
        except ImageError as exc:
            if self.mode != "auto":
                raise
            if image not in self._fallbacks:
                self._fallbacks.add(image)
                warnings.warn(
                    LocalImageFallback(f"{image} runs on the host filesystem: {exc}"),
                    stacklevel=2,
                )
            return None


class LocalHandle:
    """A runtime sandbox seen through the backend protocol."""

    def __init__(
        self,
        sandbox: LocalSandbox,
        hold: contextlib.ExitStack | None = None,
        *,
        snapshots: Path | None = None,
    ) -> None:
        self._sb = sandbox
        self._hold = hold or contextlib.ExitStack()  # e.g. the image root's in-use lock
        self._snapshots = snapshots
        self.id = sandbox.id

    def snapshot(self, *, memory: bool, keep: bool, base: str | None = None) -> Snapshot:
        """Capture the sandbox's copy-on-write layers (``runtime/snapshot.py``)."""
        import uuid

        from ..lifecycle.tags import RUN_TAG
        from ..runtime import SandboxNotFound
        from ..runtime import snapshot as snapshots

        if memory:
            raise SandboxError(memory_refused("local"))
        if self._snapshots is None:
            raise SandboxError(f"sandbox {self.id}: this handle cannot store snapshots")
        snapshot_id = f"snap-{uuid.uuid4().hex[:16]}"
        try:
            layers = snapshots.take(
                self._snapshots,
                snapshot_id,
                self._sb.snapshot,
                run=self._sb.tags().get(RUN_TAG, ""),
                kept=keep,
                source=self.id,
            )
        except SandboxNotFound as exc:
            raise SandboxGone(str(exc)) from None
        return Snapshot("local", snapshot_id, self.id, image=base, layers=layers, kept=keep)

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
        host, host_port = self._sb.tunnel(port)  # SandboxNotFound (a SandboxGone) once ended
        return Endpoint(port, kind, f"http://{host}:{host_port}", host, host_port)

    def peer(self, port: int, kind: str) -> Endpoint:
        host, host_port = self._sb.peer(port)
        return Endpoint(port, kind, f"http://{host}:{host_port}", host, host_port)

    def connect_token(self, port: int) -> ConnectToken:
        """A token for this process's auth proxy, in front of a tunnel to ``port``."""
        from ..authproxy import proxy

        sandbox = self._sb

        def upstream() -> tuple[str, int]:
            return sandbox.tunnel(port, declared=False)

        return proxy().issue(self.id, upstream)

    def finished(self) -> Ending | None:
        status = self._sb.poll()
        if status is None:
            return None
        # the runtime's kinds are Modal's, but for the entrypoint's own exit
        how = "exited" if status.kind in ("success", "failure") else status.kind
        return Ending(how, status.exitcode)

    def terminate(self, *, wait: bool = False) -> None:
        from ..authproxy import proxy

        proxy().revoke(self.id)
        try:
            self._sb.terminate(wait=wait)
        finally:
            self._hold.close()

    def release(self) -> None:
        """Nothing to drop: this process's tunnel listeners end with the sandbox or process."""

    def keep(self, seconds: float) -> None:
        self._sb.detach_owner()

    def add_tags(self, tags: Mapping[str, str]) -> None:
        self._sb.set_tags({**self._sb.tags(), **tags})

    def shell_command(self) -> str | None:
        import shlex

        argv, _env = self._sb.exec_command(["sh"])
        return shlex.join(argv)


class LocalBackend:
    """Sandboxes as bubblewrap process trees; see :mod:`pytest_modal_sandbox.runtime`."""

    name = "local"

    def __init__(
        self,
        *,
        app: str = "pytest-modal-sandbox",
        owner_lock: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        local_images: str = "pull",
        host_images: Sequence[str] = (),
        **_ignored: object,
    ) -> None:
        from ..runtime import LocalRuntime

        LocalRuntime.check()
        self.app = app
        self.images = LocalImages(local_images, host_images)
        self.owner_lock = None if owner_lock is None else str(owner_lock)
        self.runtime: LocalRuntime = LocalRuntime(state_dir)
        from ..runtime.snapshot import store_dir

        self.snapshots = store_dir(self.runtime.root)

    def remove_snapshots(self, run_id: str) -> list[str]:
        """The run's snapshots that were not kept (those clones still run on stay)."""
        from ..runtime.snapshot import remove

        in_use = [d for sb in self.runtime.list() for _, d in sb.layers]
        return remove(self.snapshots, run=run_id, in_use=in_use)

    def header(self) -> str:
        return f"local (bubblewrap); {self.images.describe()}"

    def image_config(self, image: object) -> ImageConfig:
        """The pulled image's config (for ``Daemon.from_image``); none in host-image mode."""
        if image is None:
            raise SpecError(
                "the spec has no image (its sandbox runs on the host filesystem, which has no "
                "ENTRYPOINT or CMD to run): set image=, or give the daemon a command: "
                "Daemon(name, command=...)"
            )
        if not isinstance(image, str):
            raise SpecError(
                "a modal.Image runs on the host filesystem with the local backend, which has "
                "no ENTRYPOINT or CMD to run: use an image reference string, or give the "
                "daemon a command: Daemon(name, command=...)"
            )
        if self.images.on_host(image):
            raise SpecError(
                f"image {image} is mapped to the host filesystem here (host-image mode: "
                "--modal-sandbox-local-images=host or a --modal-sandbox-host-image pattern), "
                "which has no ENTRYPOINT or CMD to run: use --modal-sandbox-local-images=pull, "
                "or give the daemon a command: Daemon(name, command=...)"
            )
        from ..images.config import image_config

        return image_config(image)

    def create(
        self,
        spec: SandboxSpec,
        *,
        tags: Mapping[str, str],
        name: str | None = None,
        shared: bool = False,
        quota_wait: float | None = None,  # no quotas here
    ) -> LocalHandle:
        from ..runtime import SandboxConfig

        layers: tuple[tuple[str, str], ...] = ()
        image = spec.image
        if isinstance(image, Snapshot):
            from ..runtime.snapshot import problem

            image.require_backend(self.name)
            why = problem(image.layers)
            if why is not None:
                raise SpecError(f"image: {image.label()}: {why}")
            layers, image = image.layers, image.image
        root = self.images.resolve(image)
        env: dict[str, str] = dict(root.env) if root is not None else {}
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
            workdir=spec.workdir or (root.workdir if root is not None else None),
            rootfs=None if root is None else str(root.path),
            timeout=float(spec.timeout),
            idle_timeout=None if spec.idle_timeout is None else float(spec.idle_timeout),
            ports=spec.ports,
            app=self.app,
            name=name,
            tags=dict(tags),
            owner_lock=self.owner_lock if shared else None,
            block_network=spec.block_network,
            cidr_allowlist=spec.cidr_allowlist,
            layers=layers,
            mounts=dict(spec.mounts),  # copied at create: writes inside stay inside
        )
        from ..runtime import NameTaken as RuntimeNameTaken

        hold = contextlib.ExitStack()
        if root is not None:
            hold.enter_context(root.use())  # `images prune` leaves a root in use alone
        try:
            return LocalHandle(self.runtime.create(config), hold, snapshots=self.snapshots)
        except RuntimeNameTaken as exc:
            hold.close()
            raise NameTaken(str(exc)) from exc
        except BaseException:
            hold.close()
            raise

    def attach(self, sandbox_id: str) -> LocalHandle:
        return LocalHandle(self.runtime.get(sandbox_id), snapshots=self.snapshots)

    def from_name(self, name: str) -> LocalHandle | None:
        from ..runtime import SandboxNotFound

        try:
            return LocalHandle(self.runtime.from_name(self.app, name), snapshots=self.snapshots)
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
