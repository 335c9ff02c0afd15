"""The ``modal`` backend: Modal sandboxes through the public ``modal`` SDK (and the ``emulator``
backend: the same code pointed at the built-in emulator).

This is the only module that imports ``modal``.  Round trips cost a network RTT each in the
cloud, so the code avoids the ones the SDK lets it avoid: images are ``Image`` objects cached per
reference (hydrated once per process), tunnels come back with the create response, and
readiness uses Modal's own probe when one probe suffices.

Dead-man switch: every sandbox gets an ``idle_timeout`` and the process that owns it keeps a
short ``sleep <lease>`` exec running in it.  If every pytest process dies, the heartbeats stop
and Modal ends the sandbox within ``lease + idle_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import modal
import modal.exception as modal_exc

from ..authproxy import ConnectToken
from ..errors import BackendUnavailable, ExecTimeout, SandboxError, SandboxGone, SpecError
from ..images.manifest import ImageConfig
from ..spec import SandboxSpec
from .protocol import Endpoint, NameTaken, RawExec, SandboxInfo

__all__ = ["SUPPORTED_MODAL", "ModalBackend", "ModalHandle"]

# [lower, upper): the emulator speaks the protocol of the 1.6.3+ client (secret_sources came in
# 1.6.1, include_terminated in 1.6.2; before 1.6.3 a V1 sandbox's handle turned V2 by its id's
# shape); keep in step with pyproject.toml and tox's modal-lowest env (a unit test checks)
SUPPORTED_MODAL = ((1, 6, 3), (1, 7, 0))
DEFAULT_LEASE = 60.0
DEFAULT_IDLE = 60  # lease + idle: an orphan ends within ~2 minutes (bound: 3)
MODAL_PLATFORM = "linux/amd64"  # what Modal runs (Image.from_registry's own requirement)

_CREDENTIALS_HELP = (
    "Modal credentials are not configured: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run "
    "`modal token new` (or use --modal-sandbox=local / emulator to run offline)"
)


def check_modal_version(version: str = modal.__version__) -> str | None:
    """A warning text when the installed modal is outside the tested range, else None."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", version)[:3]]
    if len(numbers) < 2:
        return f"could not parse the modal version {version!r}"
    parts = tuple(numbers + [0] * (3 - len(numbers)))
    low, high = SUPPORTED_MODAL
    if not low <= parts < high:
        return (
            f"modal {version} is outside the range pytest-modal-sandbox is tested with "
            f"(>={'.'.join(map(str, low))},<{'.'.join(map(str, high[:2]))}); "
            "sandboxes may misbehave — install a supported modal"
        )
    return None


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    hosts = {urlparse(part.strip()).hostname for part in url.split(",")}
    return bool(hosts) and hosts <= {"localhost", "127.0.0.1", "::1"}


def _wrap(exc: Exception, what: str) -> SandboxError:
    """A Modal error as one of ours, original attached by the caller (``raise ... from exc``)."""
    if isinstance(exc, modal_exc.AuthError):
        return BackendUnavailable(f"{what}: {exc}. {_CREDENTIALS_HELP}")
    if isinstance(exc, modal_exc.NotFoundError):
        return SandboxGone(f"{what}: {exc}")
    return SandboxError(f"{what}: {type(exc).__name__}: {exc}")


def _registry_reference(image: modal.Image, depth: int = 0) -> str | None:
    """The reference a ``modal.Image.from_registry(...)`` image (or one built on it) came from.

    The SDK keeps it only in the closures of the image's deferred loader; they are read here,
    following base images, and None is the answer when the shape is not the one known
    (modal 1.6.x): the caller then asks for a reference string instead.
    """
    from modal._utils.async_utils import synchronizer

    impl = synchronizer._translate_in(image) if isinstance(image, modal.Image) else image  # type: ignore[no-untyped-call]
    load = getattr(impl, "_load", None)
    if depth > 50 or load is None:
        return None
    for value in _cells(load).values():
        if callable(value) and "from_registry" in getattr(value, "__qualname__", ""):
            tag = _cells(value).get("tag")
            if isinstance(tag, str):
                return tag
        bases = value.values() if isinstance(value, dict) else [value]
        for base in bases:
            if type(base).__name__ == "_Image":
                found = _registry_reference(base, depth + 1)
                if found is not None:
                    return found
    return None


def _files_fingerprint(mounts: Mapping[str, str]) -> str:
    """A digest of every mounted file's path, size, mtime and mode (no contents read)."""
    import hashlib

    digest = hashlib.sha256()
    for source in mounts.values():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    digest.update(
                        f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode()
                    )
        if os.path.isfile(source):
            st = os.stat(source)
            digest.update(f"{source}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
    return digest.hexdigest()


def _cells(fn: Any) -> dict[str, Any]:
    """A function's closure by variable name (empty cells left out)."""
    code = getattr(fn, "__code__", None)
    values: dict[str, Any] = {}
    cells = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars if code else (), cells, strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            values[name] = cell.cell_contents
    return values


class _Heartbeats:
    """Keeps a ``sleep <lease>`` exec running in every owned sandbox (the dead-man switch).

    A new sandbox is active for its first ``idle_timeout`` seconds anyway, so its first beat
    is due only halfway through that: a short function-scoped test never pays the RPC.
    """

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._due: dict[str, tuple[float, modal.Sandbox]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, sb: modal.Sandbox, *, first_in: float = 0.0) -> None:
        with self._lock:
            self._due[sb.object_id] = (time.monotonic() + first_in, sb)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pms-heartbeat", daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, sandbox_id: str) -> None:
        with self._lock:
            self._due.pop(sandbox_id, None)

    def _beat(self, sb: modal.Sandbox) -> None:
        with contextlib.suppress(Exception):
            sb.exec(
                "sleep",
                str(int(self.lease)),
                stdout=modal.stream_type.StreamType.DEVNULL,
                stderr=modal.stream_type.StreamType.DEVNULL,
            )

    def _run(self) -> None:
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                due = [(sid, sb) for sid, (t, sb) in self._due.items() if t <= now]
                for sid, sb in due:
                    self._due[sid] = (now + self.lease / 2, sb)
                upcoming = min((t for t, _ in self._due.values()), default=now + self.lease)
            for _, sb in due:
                if self._closed:
                    return
                self._beat(sb)
            self._wake.wait(max(0.05, upcoming - time.monotonic()))
            self._wake.clear()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class ModalHandle:
    """One Modal sandbox through the backend protocol (and :class:`NativeReadiness`)."""

    def __init__(
        self, backend: ModalBackend, sb: modal.Sandbox, *, native_probe: bool = False
    ) -> None:
        self._backend = backend
        self._sb = sb
        self.id: str = sb.object_id
        self._tunnels: dict[int, Any] | None = None
        self._native_probe = native_probe  # created with Modal's own readiness probe

    @property
    def has_native_probe(self) -> bool:
        return self._native_probe

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> RawExec:
        deadline = None if timeout is None else max(1, math.ceil(timeout))
        try:
            proc = self._sb.exec(
                *argv, env=dict(env) if env else None, workdir=workdir, timeout=deadline, text=False
            )
            if stdin:
                proc.stdin.write(stdin)
            if stdin is not None:
                proc.stdin.write_eof()
                proc.stdin.drain()
            out = proc.stdout.read()
            err = proc.stderr.read()
            code = proc.wait()
        except modal_exc.Error as exc:
            raise _wrap(exc, f"exec {' '.join(argv)!r} in sandbox {self.id}") from exc
        if code == -1 and timeout is not None:
            raise ExecTimeout(
                f"command {' '.join(argv)!r} in sandbox {self.id} ran past its timeout of "
                f"{timeout:g}s",
                stdout=bytes(out),
                stderr=bytes(err),
            )
        return RawExec(code, bytes(out), bytes(err))

    def spawn(self, argv: Sequence[str]) -> None:
        """Start ``argv`` and do not wait for it (one RPC)."""
        devnull = modal.stream_type.StreamType.DEVNULL
        try:
            self._sb.exec(*argv, stdout=devnull, stderr=devnull)
        except modal_exc.Error as exc:
            raise _wrap(exc, f"exec {' '.join(argv)!r} in sandbox {self.id}") from exc

    def wait_native_ready(self, timeout: float) -> bool:
        """Modal's readiness probe: True when ready within ``timeout``, False if not yet."""
        try:
            self._sb.wait_until_ready(timeout=max(1, math.ceil(timeout)))
        except modal_exc.TimeoutError:
            return False
        except modal_exc.Error as exc:
            raise _wrap(exc, f"waiting for sandbox {self.id} to be ready") from exc
        return True

    def endpoint(self, port: int, kind: str) -> Endpoint:
        if self._tunnels is None:
            try:
                self._tunnels = self._sb.tunnels()
            except modal_exc.Error as exc:
                raise _wrap(exc, f"tunnels of sandbox {self.id}") from exc
        tunnel = self._tunnels.get(port)
        if tunnel is None:
            raise SandboxError(f"sandbox {self.id} has no tunnel for port {port}")
        if kind == "unencrypted_ports":
            host, host_port = tunnel.unencrypted_host, tunnel.unencrypted_port
            return Endpoint(port, kind, f"http://{host}:{host_port}", host, host_port)
        host, host_port = tunnel.host, tunnel.port
        url = tunnel.url
        if self._backend.loopback:
            # the emulator's encrypted ports accept plain HTTP on the same port, so the URL
            # works with any client's default settings (no emulator CA needed)
            url = f"http://{host}:{host_port}"
        return Endpoint(port, kind, url, host, host_port)

    def connect_token(self, port: int) -> ConnectToken:
        """Modal's own: ``Sandbox.create_connect_token(port=...)``."""
        create = getattr(self._sb, "create_connect_token", None)
        if create is None:
            raise SandboxError(
                f"modal {modal.__version__} has no Sandbox.create_connect_token: upgrade modal"
            )
        try:
            creds = create() if port == 8080 else create(port=port)
        except modal_exc.Error as exc:
            raise _wrap(exc, f"creating a connect token for sandbox {self.id}") from exc
        return ConnectToken(creds.url, creds.token)

    def finished(self) -> str | None:
        try:
            code = self._sb.poll()
        except modal_exc.Error as exc:
            return f"unknown ({exc})"
        return None if code is None else f"exit code {code}"

    def terminate(self, *, wait: bool = False) -> None:
        self._backend.heartbeats.remove(self.id)
        try:
            if wait:
                self._sb.terminate(wait=True)
            else:
                self._sb.terminate()
        except modal_exc.Error as exc:
            raise _wrap(exc, f"terminating sandbox {self.id}") from exc

    def release(self) -> None:
        self._backend.heartbeats.remove(self.id)

    def add_tags(self, tags: Mapping[str, str]) -> None:
        try:
            self._sb.set_tags({**self._sb.get_tags(), **tags})
        except modal_exc.Error as exc:
            raise _wrap(exc, f"tagging sandbox {self.id}") from exc

    def shell_command(self) -> str | None:
        return None if self._backend.loopback else f"modal shell {self.id}"

    def keep(self, seconds: float) -> None:
        """Hold the sandbox for ``seconds`` more with one long exec, then let it idle out."""
        self._backend.heartbeats.remove(self.id)
        with contextlib.suppress(modal_exc.Error):
            self._sb.exec("sleep", str(int(seconds)))


class ModalBackend:
    def __init__(
        self,
        *,
        emulator: bool = False,
        app: str = "pytest-modal-sandbox",
        environment: str | None = None,
        server_url: str | None = None,
        token_id: str | None = None,
        token_secret: str | None = None,
        lease: float = DEFAULT_LEASE,
        idle_timeout: int = DEFAULT_IDLE,
        local_images: str = "pull",
        host_images: Sequence[str] = (),
        **_ignored: object,
    ) -> None:
        warning = check_modal_version()
        if warning:
            warnings.warn(warning, stacklevel=2)
        self.name = "emulator" if emulator else "modal"
        self.emulator = emulator
        self.app_name = app
        self.environment = environment
        self.default_idle = idle_timeout
        self.heartbeats = _Heartbeats(lease)
        # the emulator maps images as the local backend does (the run hands it these settings)
        self._host_images = (local_images, tuple(host_images)) if emulator else None
        self._images: dict[str, modal.Image] = {}
        self._mounted: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # see _with_mounts
        self._app: modal.App | None = None
        self._lock = threading.Lock()
        if server_url:
            from modal_proto import api_pb2

            creds = (
                token_id or "ak-pytest-modal-sandbox",
                token_secret or "as-pytest-modal-sandbox",
            )
            self.client = modal.Client(server_url, api_pb2.CLIENT_TYPE_CLIENT, creds)
            self.client.__enter__()  # type: ignore[no-untyped-call]  # opens the connection; closed in close()
        elif emulator:
            raise BackendUnavailable("the emulator backend needs the emulator's server_url")
        else:
            try:
                self.client = modal.Client.from_env()
            except modal_exc.AuthError as exc:
                raise BackendUnavailable(_CREDENTIALS_HELP) from exc
        self.server_url = server_url or "Modal"
        # Modal itself is never on loopback: a local server_url is the emulator
        url = server_url or str(modal.config.config.get("server_url") or "")
        self.loopback = emulator or _is_loopback(url)

    def header(self) -> str:
        if self.emulator:
            return f"emulator (Modal protocol at {self.server_url}, modal {modal.__version__})"
        env = f", environment {self.environment}" if self.environment else ""
        return f"modal (app {self.app_name}{env}, modal {modal.__version__})"

    @property
    def app(self) -> modal.App:
        with self._lock:
            if self._app is None:
                try:
                    self._app = modal.App.lookup(
                        self.app_name,
                        create_if_missing=True,
                        client=self.client,
                        environment_name=self.environment,
                    )
                except modal_exc.Error as exc:
                    raise _wrap(exc, f"looking up Modal app {self.app_name!r}") from exc
            return self._app

    def _image(self, image: Any) -> modal.Image | None:
        if image is None or isinstance(image, modal.Image):
            return image
        with self._lock:
            if image not in self._images:
                self._images[image] = modal.Image.from_registry(image)
            return self._images[image]

    def _with_mounts(self, image: modal.Image | None, mounts: Mapping[str, str]) -> Any:
        """``image`` with the spec's mounts as layers attached at start (``copy=False``: no
        rebuild).  The client hashes every file of a mount each time it loads one, so the
        image is kept per base image, mounts and a cheap fingerprint of the files (paths,
        sizes, mtimes): a start whose files did not change reuses the loaded mounts, and a
        change makes a new image, which the client uploads (what changed only)."""
        if not mounts:
            return image
        key = (id(image), tuple(mounts.items()), _files_fingerprint(mounts))
        with self._lock:
            cached = self._mounted.get(key)
            if cached is not None and cached[0] is image:
                return cached[1]
        out = image if image is not None else modal.Image.debian_slim()  # Modal's default
        for target, source in mounts.items():
            if os.path.isdir(source):
                out = out.add_local_dir(source, target)
            else:
                out = out.add_local_file(source, target)
        with self._lock:
            if len(self._mounted) >= 64:
                self._mounted.pop(next(iter(self._mounted)))
            self._mounted[key] = (image, out)
        return out

    def image_config(self, image: object) -> ImageConfig:
        """The config of the registry image ``image`` is (for ``Daemon.from_image``), read from
        the registry on this machine for Modal's platform, once per image (cached on disk)."""
        if isinstance(image, str):
            reference: str | None = image
        elif isinstance(image, modal.Image):
            reference = _registry_reference(image)
        else:
            reference = None
        if reference is None:
            raise SpecError(
                "its ENTRYPOINT and CMD are read from the image's registry, so the image must "
                "be a reference string or built by modal.Image.from_registry(reference) "
                f"(got {'no image' if image is None else type(image).__name__}); or give the "
                "daemon a command: Daemon(name, command=...)"
            )
        if self._host_images is not None:
            from .local import LocalImages

            mode, patterns = self._host_images
            if LocalImages(mode, patterns).on_host(reference):
                raise SpecError(
                    f"image {reference} is mapped to the host filesystem by the emulator "
                    "(host-image mode: --modal-sandbox-local-images=host or a "
                    "--modal-sandbox-host-image pattern), which has no ENTRYPOINT or CMD to "
                    "run: use --modal-sandbox-local-images=pull, or give the daemon a "
                    "command: Daemon(name, command=...)"
                )
        from ..images.config import image_config

        return image_config(reference, platform=MODAL_PLATFORM)

    def create(
        self,
        spec: SandboxSpec,
        *,
        tags: Mapping[str, str],
        name: str | None = None,
        shared: bool = False,
    ) -> ModalHandle:
        secrets = [
            modal.Secret.from_dict(dict(s)) if isinstance(s, Mapping) else s for s in spec.secrets
        ]
        probes = [d.ready for d in spec.daemons if d.ready is not None]
        native = None
        if len(probes) == 1 and probes[0].kind == "tcp" and probes[0].port is not None:
            native = modal.Probe.with_tcp(probes[0].port)
        elif len(probes) == 1 and probes[0].kind == "exec":
            native = modal.Probe.with_exec(*probes[0].argv)
        kwargs: dict[str, Any] = {}
        if spec.cpu is not None:
            kwargs["cpu"] = spec.cpu
        if spec.memory is not None:
            kwargs["memory"] = spec.memory
        if spec.gpu is not None:
            kwargs["gpu"] = spec.gpu
        try:
            sb = modal.Sandbox.create(
                app=self.app,
                image=self._with_mounts(self._image(spec.image), spec.mounts),
                name=name,
                tags=dict(tags),
                env=dict(spec.env) or None,
                secrets=secrets,
                timeout=int(spec.timeout),
                idle_timeout=int(spec.idle_timeout or self.default_idle),
                workdir=spec.workdir,
                encrypted_ports=list(spec.encrypted_ports),
                unencrypted_ports=list(spec.unencrypted_ports),
                h2_ports=list(spec.h2_ports),
                readiness_probe=native,
                client=self.client,
                **kwargs,
            )
        except modal_exc.AlreadyExistsError as exc:
            raise NameTaken(
                f"a running sandbox of app {self.app_name!r} is named {name!r}"
            ) from exc
        except modal_exc.Error as exc:
            raise _wrap(exc, f"creating a sandbox for {spec.image_label()}") from exc
        handle = ModalHandle(self, sb, native_probe=native is not None)
        self.heartbeats.add(
            sb, first_in=min(self.heartbeats.lease, spec.idle_timeout or self.default_idle) / 2
        )
        return handle

    def attach(self, sandbox_id: str) -> ModalHandle:
        try:
            sb = modal.Sandbox.from_id(sandbox_id, client=self.client)
        except modal_exc.Error as exc:
            raise _wrap(exc, f"attaching to sandbox {sandbox_id}") from exc
        return ModalHandle(self, sb)

    def from_name(self, name: str) -> ModalHandle | None:
        try:
            sb = modal.Sandbox.from_name(
                self.app_name, name, environment_name=self.environment, client=self.client
            )
        except modal_exc.NotFoundError:
            return None
        except modal_exc.Error as exc:
            raise _wrap(exc, f"looking up sandbox {name!r}") from exc
        self.heartbeats.add(sb)
        return ModalHandle(self, sb)

    def list(self, tags: Mapping[str, str]) -> list[SandboxInfo]:
        try:
            found = list(
                modal.Sandbox.list(app_id=self.app.app_id, tags=dict(tags), client=self.client)
            )
            return [SandboxInfo(sb.object_id, sb.get_tags()) for sb in found]
        except modal_exc.Error as exc:
            raise _wrap(exc, f"listing sandboxes of app {self.app_name!r}") from exc

    def terminate(self, sandbox_id: str) -> None:
        self.heartbeats.remove(sandbox_id)
        try:
            modal.Sandbox.from_id(sandbox_id, client=self.client).terminate()
        except modal_exc.NotFoundError:
            pass
        except modal_exc.Error as exc:
            raise _wrap(exc, f"terminating sandbox {sandbox_id}") from exc

    def close(self) -> None:
        self.heartbeats.close()
        if self.server_url != "Modal":
            with contextlib.suppress(Exception):
                self.client.__exit__(None, None, None)  # type: ignore[no-untyped-call]  # own client (explicit URL)
