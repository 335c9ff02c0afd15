"""The ``modal`` backend: Modal sandboxes through the public ``modal`` SDK (and the ``emulator``
backend: the same code pointed at the built-in emulator).

This is the only module that imports ``modal``.  Round trips cost a network RTT each in the
cloud, so the code avoids the ones the SDK lets it avoid: images are ``Image`` objects cached per
reference (hydrated once per process), tunnels come back with the create response, and
readiness uses Modal's own probe when one probe suffices.

Dead-man switch: every sandbox gets an ``idle_timeout`` and the process that owns it keeps a
short ``sleep <lease>`` exec running in it.  If every pytest process dies, the heartbeats stop
and Modal ends the sandbox within ``lease + idle_timeout`` seconds.

What is retried (Modal fails, we don't).  The client retries each call itself: control-plane
calls 3 times within a second, command-router calls 10 times, an exec's wait for ever, output
streams 10 reconnects, throttled creates for as long as Modal asks.  What it then raises is
*transient* (:func:`transient`: ``ServiceError``, ``InternalError``, modal's
``ConnectionError``, grpclib's raw ``StreamTerminatedError`` and ``GRPCError`` with a retryable
status, socket errors, timeouts) or not (not found, already exists, invalid, auth, permission,
a quota, the sandbox's own ending).  On top of the client, through :mod:`.retry`, until
:data:`CALL_SECONDS` (:data:`CREATE_SECONDS` for a create), each attempt an ``.aio`` call on
:class:`LoopThread` cut off after :data:`ATTEMPT_SECONDS` (:data:`LONG_POLL_SECONDS` for a
call that long-polls), so a stalled connection is one more transient failure, not a hang:

* retried, being idempotent: ``App.lookup``, ``Sandbox.from_id``/``from_name``/``list``,
  ``poll``/``wait`` (how a sandbox ended), ``tunnels``, tags (read, merge, write),
  ``terminate``;
* a create, which is not idempotent across calls (the client's idempotency key is minted per
  call): each create carries its own token tag (``CREATE_TAG``); after a transient failure the
  sandbox with that token is looked up and adopted if the lost create made it, and only
  otherwise created again — so no sandbox is created twice;
* a create refused for a quota (``ResourceExhaustedError`` without a retry-after: the
  workspace's concurrent sandboxes) waits for a slot for ``quota_wait`` seconds, then is one
  :class:`QuotaExceeded` naming the quota and the fix;
* not retried: ``exec`` (a second call would run the command twice) and the daemons' launch;
  an exec runs on a private event loop while the sandbox is watched (``wait``, one long poll),
  so a sandbox that ends under a command is a prompt ``SandboxGone``, never a wait on retries
  that cannot succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import grpclib
import modal
import modal.exception as modal_exc
from grpclib.exceptions import StreamTerminatedError
from h2.exceptions import ProtocolError as H2ProtocolError

from .. import interruptible
from ..authproxy import ConnectToken
from ..errors import (
    BackendUnavailable,
    ExecTimeout,
    QuotaExceeded,
    RetriesExhausted,
    SandboxError,
    SandboxGone,
    SpecError,
)
from ..images.manifest import ImageConfig
from ..lifecycle.tags import CREATE_TAG
from ..snapshot import Snapshot, memory_refused
from ..spec import SandboxSpec
from .protocol import Ending, Endpoint, NameTaken, RawExec, SandboxInfo
from .retry import Backoff, retrying

__all__ = [
    "SUPPORTED_MODAL",
    "EndedUnderIt",
    "LoopThread",
    "ModalBackend",
    "ModalHandle",
    "create_once",
    "retried",
    "transient",
    "unless_ended",
]

# [lower, upper): the emulator speaks the protocol of the 1.6.3+ client (secret_sources came in
# 1.6.1, include_terminated in 1.6.2; before 1.6.3 a V1 sandbox's handle turned V2 by its id's
# shape); keep in step with pyproject.toml and tox's modal-lowest env (a unit test checks)
SUPPORTED_MODAL = ((1, 6, 3), (1, 7, 0))
DEFAULT_LEASE = 60.0
DEFAULT_IDLE = 60  # lease + idle: an orphan ends within ~2 minutes (bound: 3)
CALL_SECONDS = 30.0  # an idempotent call, retried through transient errors
ATTEMPT_SECONDS = 20.0  # one attempt of a quick call (the SDK's own retries within): no hang
LONG_POLL_SECONDS = 75.0  # one attempt of a call that long-polls (tunnels: 50 s)
CREATE_SECONDS = 60.0  # a create, retried (without duplicates) through transient errors
DEFAULT_QUOTA_WAIT = 60.0  # a create refused for a quota waits this long for a slot
WATCH_AFTER = 1.0  # an exec still running after this long has its sandbox watched
RUN_TTL = 24 * 3600  # a snapshot not kept: as long as a sandbox may live
KEPT_TTL = 30 * 24 * 3600  # Modal's default
MODAL_PLATFORM = "linux/amd64"  # what Modal runs (Image.from_registry's own requirement)

T = TypeVar("T")

# grpclib's statuses the client itself retries: still transient when its retries ran out
_TRANSIENT_STATUSES = frozenset(
    {
        grpclib.Status.UNAVAILABLE,
        grpclib.Status.INTERNAL,
        grpclib.Status.UNKNOWN,
        grpclib.Status.DEADLINE_EXCEEDED,
        grpclib.Status.CANCELLED,
    }
)
# everything a call into the SDK raises when Modal (or the way to it) fails
_SDK_ERRORS = (
    modal_exc.Error,
    grpclib.GRPCError,
    StreamTerminatedError,
    H2ProtocolError,
    OSError,
    asyncio.TimeoutError,
)

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


def transient(exc: BaseException) -> bool:
    """Whether an error of an SDK call is worth retrying (the call may not have reached Modal,
    or its answer was lost), once the client's own retries ran out."""
    if isinstance(exc, modal_exc.Error):  # some are GRPCErrors too: their class decides
        return isinstance(
            exc, (modal_exc.ServiceError, modal_exc.InternalError, modal_exc.ConnectionError)
        )
    if isinstance(exc, grpclib.GRPCError):
        return exc.status in _TRANSIENT_STATUSES
    return isinstance(exc, (StreamTerminatedError, H2ProtocolError, OSError, asyncio.TimeoutError))


def retried(
    loop: LoopThread,
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    seconds: float = CALL_SECONDS,
    attempt: float | None = ATTEMPT_SECONDS,
    raw: bool = False,
) -> T:
    """An idempotent SDK call (``call()`` makes one attempt: the SDK's ``.aio`` coroutine),
    each attempt bounded by ``attempt`` seconds, retried through transient errors for
    ``seconds``; other errors as ours (``raw``: the SDK's own left as they are)."""
    try:
        return retrying(
            lambda: loop.attempt(call, attempt), what=what, transient=transient, seconds=seconds
        )
    except _SDK_ERRORS as exc:
        if raw:
            raise
        raise _wrap(exc, what) from exc


def _wrap(exc: BaseException, what: str) -> SandboxError:
    """A Modal error as one of ours, original attached by the caller (``raise ... from exc``)."""
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, modal_exc.AuthError):
        return BackendUnavailable(f"{what}: {exc}. {_CREDENTIALS_HELP}")
    if isinstance(exc, modal_exc.NotFoundError):
        return SandboxGone(f"{what}: {exc}")
    return SandboxError(f"{what}: {type(exc).__name__}: {exc}")


class LoopThread:
    """A private event loop on a thread: execs and retried calls run on it (through the SDK's
    ``.aio`` calls), so one whose sandbox ends, or one attempt that stalls, can be cancelled
    instead of waited for."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._serve, args=(self._loop,), name="pms-modal-exec", daemon=True
                ).start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return interruptible.result(future)
        except BaseException:
            future.cancel()  # e.g. Ctrl-C: the exec's coroutines are cancelled, not left
            raise

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_forever()
        finally:
            loop.close()

    def attempt(self, call: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        """One attempt of ``call()``, cancelled (``asyncio.TimeoutError``, transient) when it
        takes longer than ``timeout``: a stalled connection is not a hang."""

        async def bounded() -> T:
            return await asyncio.wait_for(call(), timeout)

        return self.run(bounded())

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


class EndedUnderIt(Exception):
    """The sandbox ended while a command ran in it."""


async def unless_ended(
    work: Awaitable[T], ended: Callable[[], Awaitable[object]], *, grace: float = WATCH_AFTER
) -> T:
    """``work``'s result; if it takes longer than ``grace``, ``ended()`` watches the sandbox
    meanwhile, and when that returns first, ``work`` is cancelled and :class:`EndedUnderIt`
    raised (a watch that fails only stops watching).  Quick work costs no watching."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=grace)
    if task in done:
        return task.result()
    watch = asyncio.ensure_future(ended())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.exception() is not None:
            await asyncio.wait({task})  # cannot watch: wait for the work alone
    except BaseException:
        task.cancel()
        watch.cancel()
        raise
    if task.done():
        watch.cancel()
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=5.0)  # let its cancellation run (the SDK's cleanup)
    raise EndedUnderIt


def create_once(
    create: Callable[[], T],
    made: Callable[[], T | None],
    *,
    what: str,
    seconds: float = CREATE_SECONDS,
    quota_wait: float = DEFAULT_QUOTA_WAIT,
    backoff: Callable[..., Backoff] = Backoff,
) -> T:
    """``create()`` through transient errors and a busy quota, and never twice: after a
    transient failure ``made()`` looks for what that create made (its answer may be all that
    was lost) before creating again.  A quota that does not free in ``quota_wait`` seconds is
    :class:`QuotaExceeded`, transient errors past ``seconds`` :class:`RetriesExhausted`."""
    faults = backoff(seconds)
    quota = backoff(quota_wait, first=0.5, most=5.0)
    while True:
        try:
            return create()
        except modal_exc.ResourceExhaustedError as exc:
            if not quota.wait():
                raise QuotaExceeded(
                    f"{what}: Modal refused it for a quota of the workspace ({exc}) and no "
                    f"slot freed in {quota_wait:g} s of retrying. Fewer sandboxes at once fix "
                    "it: fewer xdist workers (-n), no sandboxes started ahead "
                    "(--modal-sandbox-ahead=0), or a higher limit for the workspace on "
                    "Modal; --modal-sandbox-quota-wait waits longer"
                ) from exc
        except modal_exc.AlreadyExistsError:
            found = made() if faults.attempts else None
            if found is None:
                raise  # the name is someone else's, not ours from a lost answer
            return found
        except Exception as exc:
            if not transient(exc):
                raise
            found = made()
            if found is not None:
                return found
            if not faults.wait():
                raise RetriesExhausted(
                    f"{what}: still failing after {faults.attempts} attempts in {seconds:g} s "
                    f"(transient errors are retried until then): {type(exc).__name__}: {exc}"
                ) from exc


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
        self,
        backend: ModalBackend,
        sb: modal.Sandbox,
        *,
        native_probe: bool = False,
        limits: tuple[float, float] | None = None,
    ) -> None:
        self._backend = backend
        self._sb = sb
        self.id: str = sb.object_id
        self._tunnels: dict[int, Any] | None = None
        self._native_probe = native_probe  # created with Modal's own readiness probe
        # (when its create was asked for, its timeout): tells an idle timeout from its timeout
        self._limits = limits

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
        what = f"exec {' '.join(argv)!r} in sandbox {self.id}"
        work = self._exec(argv, env=env, workdir=workdir, stdin=stdin, deadline=deadline)
        try:
            code, out, err = self._backend.loop.run(unless_ended(work, self._until_ended))
        except EndedUnderIt:
            raise SandboxGone(f"sandbox {self.id} ended while {what} ran") from None
        except _SDK_ERRORS as exc:
            raise self._failed(exc, what) from exc
        if code == -1 and timeout is not None:
            raise ExecTimeout(
                f"command {' '.join(argv)!r} in sandbox {self.id} ran past its timeout of "
                f"{timeout:g}s",
                stdout=out,
                stderr=err,
            )
        return RawExec(code, out, err)

    async def _exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        workdir: str | None,
        stdin: bytes | None,
        deadline: int | None,
    ) -> tuple[int, bytes, bytes]:
        proc = await self._sb.exec.aio(
            *argv, env=dict(env) if env else None, workdir=workdir, timeout=deadline, text=False
        )
        if stdin:
            proc.stdin.write(stdin)
        if stdin is not None:
            proc.stdin.write_eof()
            await proc.stdin.drain.aio()
        out, err = await asyncio.gather(proc.stdout.read.aio(), proc.stderr.read.aio())
        code = await proc.wait.aio()
        return int(code), bytes(out), bytes(err)

    async def _until_ended(self) -> None:
        """Return once the sandbox has ended (one long poll at a time, through faults)."""
        while True:
            try:
                await self._sb.wait.aio(raise_on_termination=False)
                return
            except modal_exc.NotFoundError:
                return
            except Exception as exc:
                if not transient(exc):
                    raise
            await asyncio.sleep(1.0)

    def _failed(self, exc: BaseException, what: str) -> SandboxError:
        """An SDK error of a call that needs the sandbox: gone if it has ended, else wrapped."""
        try:
            ended = self.finished()
        except SandboxError:
            ended = None
        if ended is not None:
            return SandboxGone(f"{what}: {type(exc).__name__}: {exc}", how=ended.how)
        return _wrap(exc, what)

    def spawn(self, argv: Sequence[str]) -> None:
        """Start ``argv`` and do not wait for it (one RPC; not retried: it would run twice)."""
        devnull = modal.stream_type.StreamType.DEVNULL
        try:
            self._sb.exec(*argv, stdout=devnull, stderr=devnull)
        except _SDK_ERRORS as exc:
            raise self._failed(exc, f"exec {' '.join(argv)!r} in sandbox {self.id}") from exc

    def wait_native_ready(self, timeout: float) -> bool:
        """Modal's readiness probe: True when ready within ``timeout``, False if not yet (or
        the wait failed transiently: the caller asks again until its deadline)."""
        try:
            self._sb.wait_until_ready(timeout=max(1, math.ceil(timeout)))
        except modal_exc.TimeoutError:
            return False
        except _SDK_ERRORS as exc:
            if transient(exc):
                return False
            raise self._failed(exc, f"waiting for sandbox {self.id} to be ready") from exc
        return True

    def endpoint(self, port: int, kind: str) -> Endpoint:
        if self._tunnels is None:
            try:
                self._tunnels = retried(
                    self._backend.loop,
                    f"tunnels of sandbox {self.id}",
                    self._sb.tunnels.aio,
                    attempt=LONG_POLL_SECONDS,
                )
            except SandboxError as exc:
                if isinstance(exc.__cause__, modal_exc.SandboxTimeoutError):
                    raise self._failed(exc.__cause__, f"tunnels of sandbox {self.id}") from exc
                raise
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

    def peer(self, port: int, kind: str) -> Endpoint:
        """The tunnel's public address: where any other sandbox connects.  The emulator's
        tunnels also listen on this machine's non-loopback address (same port), which its
        sandboxes reach; 127.0.0.1 is never reachable from a sandbox."""
        endpoint = self.endpoint(port, kind)
        if not self._backend.loopback:
            return endpoint
        from ..runtime import peer_host

        host = peer_host()
        url = f"http://{host}:{endpoint.host_port}"
        return Endpoint(port, kind, url, host, endpoint.host_port)

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

    def finished(self) -> Ending | None:
        """How it ended, from Modal's result: ``wait()`` raises for TERMINATED and TIMEOUT and
        returns for the rest, whose exit code tells an OOM kill (137: the sandbox's own
        command only ever ends by a signal) and an idle timeout (124) apart."""
        what = f"polling sandbox {self.id}"
        loop = self._backend.loop
        try:
            code = retried(loop, what, self._sb.poll.aio, raw=True)
            if code is None:
                return None
            retried(loop, what, lambda: self._sb.wait.aio(raise_on_termination=True), raw=True)
        except modal_exc.SandboxTerminatedError:
            return Ending("terminated", 137)
        except modal_exc.SandboxTimeoutError:
            # Modal may report an idle timeout as TIMEOUT: one before the timeout is idle
            created, limit = self._limits or (0.0, 0.0)
            idle = self._limits is not None and time.monotonic() - created < limit
            return Ending("idle_timeout" if idle else "timeout", 124)
        except modal_exc.NotFoundError as exc:
            return Ending("unknown", detail=f"Modal no longer knows it ({exc})")
        except _SDK_ERRORS as exc:
            raise _wrap(exc, what) from exc
        if code == 137:
            return Ending("oom", 137)
        if code == 124:
            return Ending("idle_timeout", 124)
        return Ending("exited", code)

    def terminate(self, *, wait: bool = False) -> None:
        self._backend.heartbeats.remove(self.id)

        async def end() -> None:
            try:
                await self._sb.terminate.aio()
                if wait:
                    await self._sb.wait.aio(raise_on_termination=False)
            except modal_exc.NotFoundError:
                pass  # gone already

        attempt = LONG_POLL_SECONDS if wait else ATTEMPT_SECONDS
        retried(self._backend.loop, f"terminating sandbox {self.id}", end, attempt=attempt)

    def release(self) -> None:
        self._backend.heartbeats.remove(self.id)

    def add_tags(self, tags: Mapping[str, str]) -> None:
        async def tag() -> None:
            await self._sb.set_tags.aio({**(await self._sb.get_tags.aio()), **tags})

        retried(self._backend.loop, f"tagging sandbox {self.id}", tag)

    def shell_command(self) -> str | None:
        return None if self._backend.loopback else f"modal shell {self.id}"

    def snapshot(self, *, memory: bool, keep: bool, base: str | None = None) -> Snapshot:
        """``snapshot_filesystem()``: an Image id; kept for Modal's default 30 days with
        ``keep``, else for a day (Modal deletes it then; there is no delete call)."""
        if memory:
            raise SandboxError(memory_refused(self._backend.name))
        try:
            image = self._sb.snapshot_filesystem(ttl=KEPT_TTL if keep else RUN_TTL)
        except modal_exc.Error as exc:
            raise _wrap(exc, f"snapshotting sandbox {self.id}") from exc
        return Snapshot(self._backend.name, image.object_id, self.id, kept=keep)

    def keep(self, seconds: float) -> None:
        """Hold the sandbox for ``seconds`` more with one long exec, then let it idle out."""
        self._backend.heartbeats.remove(self.id)
        with contextlib.suppress(*_SDK_ERRORS):
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
        quota_wait: float = DEFAULT_QUOTA_WAIT,
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
        self.quota_wait = quota_wait
        self.heartbeats = _Heartbeats(lease)
        self.loop = LoopThread()
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
                self._app = retried(
                    self.loop,
                    f"looking up Modal app {self.app_name!r}",
                    lambda: modal.App.lookup.aio(
                        self.app_name,
                        create_if_missing=True,
                        client=self.client,
                        environment_name=self.environment,
                    ),
                )
            return self._app

    def _image(self, image: Any) -> modal.Image | None:
        if image is None or isinstance(image, modal.Image):
            return image
        if isinstance(image, Snapshot):
            image.require_backend(self.name)
            try:
                return modal.Image.from_id(image.id, client=self.client)
            except modal_exc.NotFoundError as exc:
                raise SandboxError(
                    f"{image.label()} is gone (its ttl passed, or the emulator that took it "
                    "was restarted); take it again"
                ) from exc
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
        quota_wait: float | None = None,
    ) -> ModalHandle:
        secrets_ = [
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
        if spec.block_network:
            kwargs["block_network"] = True
        if spec.cidr_allowlist is not None:  # Modal's name for `cidr_allowlist` since 1.4
            kwargs["outbound_cidr_allowlist"] = list(spec.cidr_allowlist)
        token = secrets.token_hex(8)
        requested = time.monotonic()

        def create() -> modal.Sandbox:
            return modal.Sandbox.create(
                app=self.app,
                image=self._with_mounts(self._image(spec.image), spec.mounts),
                name=name,
                tags={**tags, CREATE_TAG: token},
                env=dict(spec.env) or None,
                secrets=secrets_,
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

        what = f"creating a sandbox for {spec.image_label()}"
        try:
            sb = self._create_once(
                create, token, what, self.quota_wait if quota_wait is None else quota_wait
            )
        except modal_exc.AlreadyExistsError as exc:
            raise NameTaken(
                f"a running sandbox of app {self.app_name!r} is named {name!r}"
            ) from exc
        except _SDK_ERRORS as exc:
            raise _wrap(exc, what) from exc
        handle = ModalHandle(
            self, sb, native_probe=native is not None, limits=(requested, float(spec.timeout))
        )
        self.heartbeats.add(
            sb, first_in=min(self.heartbeats.lease, spec.idle_timeout or self.default_idle) / 2
        )
        return handle

    def _create_once(
        self, create: Callable[[], modal.Sandbox], token: str, what: str, quota_wait: float
    ) -> modal.Sandbox:
        return create_once(
            create,
            lambda: self._made(token, what),
            what=what,
            seconds=CREATE_SECONDS,
            quota_wait=quota_wait,
        )

    def _made(self, token: str, what: str) -> modal.Sandbox | None:
        """The sandbox a create with ``token`` made, if it did (its answer was lost)."""
        found = self._listed(
            f"{what}: looking for the sandbox of a create whose answer was lost",
            {CREATE_TAG: token},
        )
        return found[0] if found else None

    def _listed(self, what: str, tags: Mapping[str, str]) -> list[modal.Sandbox]:
        app_id = self.app.app_id  # looked up here, not on the loop that runs the listing

        async def listing() -> list[modal.Sandbox]:
            found = modal.Sandbox.list.aio(app_id=app_id, tags=dict(tags), client=self.client)
            return [sb async for sb in found]

        return retried(self.loop, what, listing)

    def attach(self, sandbox_id: str) -> ModalHandle:
        sb = retried(
            self.loop,
            f"attaching to sandbox {sandbox_id}",
            lambda: modal.Sandbox.from_id.aio(sandbox_id, client=self.client),
        )
        return ModalHandle(self, sb)

    def from_name(self, name: str) -> ModalHandle | None:
        async def lookup() -> modal.Sandbox | None:
            try:
                return await modal.Sandbox.from_name.aio(
                    self.app_name, name, environment_name=self.environment, client=self.client
                )
            except modal_exc.NotFoundError:
                return None

        sb = retried(self.loop, f"looking up sandbox {name!r}", lookup)
        if sb is None:
            return None
        self.heartbeats.add(sb)
        return ModalHandle(self, sb)

    def list(self, tags: Mapping[str, str]) -> list[SandboxInfo]:
        app_id = self.app.app_id  # looked up here, not on the loop that runs the listing

        async def listing() -> list[SandboxInfo]:
            found = modal.Sandbox.list.aio(app_id=app_id, tags=dict(tags), client=self.client)
            sandboxes = [sb async for sb in found]
            few = asyncio.Semaphore(16)  # each one's tags are a request of its own

            async def info(sb: modal.Sandbox) -> SandboxInfo:
                async with few:
                    return SandboxInfo(sb.object_id, dict(await sb.get_tags.aio()))

            return list(await asyncio.gather(*(info(sb) for sb in sandboxes)))

        what = f"listing sandboxes of app {self.app_name!r}"
        return retried(self.loop, what, listing, attempt=LONG_POLL_SECONDS)

    def terminate(self, sandbox_id: str) -> None:
        self.heartbeats.remove(sandbox_id)

        async def end() -> None:
            try:
                sb = await modal.Sandbox.from_id.aio(sandbox_id, client=self.client)
                await sb.terminate.aio()
            except modal_exc.NotFoundError:
                pass  # gone already

        retried(self.loop, f"terminating sandbox {sandbox_id}", end)

    def close(self) -> None:
        self.heartbeats.close()
        self.loop.close()
        if self.server_url != "Modal":
            with contextlib.suppress(Exception):
                self.client.__exit__(None, None, None)  # type: ignore[no-untyped-call]  # own client (explicit URL)
