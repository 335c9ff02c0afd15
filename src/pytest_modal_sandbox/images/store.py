"""The content-addressed image cache: pull once, unpack once, share between processes.

Layout under ``<cache_root()>/images`` (see :func:`pytest_modal_sandbox._paths.cache_root`)::

    blobs/sha256/<hex>        verified blobs (manifests, configs, compressed layers)
    roots/<config hex>/       one unpacked image: rootfs/ (read-only by contract), image.json,
                              use.lock (shared flock while in use; mtime = last use)
    refs/<hash>.json          reference + platform -> manifest and config digests
    locks/{blob,root}-<hex>.lock
    tmp/                      downloads and unpacks in progress (renamed into place when done)

Concurrency: each blob is downloaded under its own file lock and each root is unpacked under
its own lock, into ``tmp/`` first and then renamed into place, so concurrent xdist workers
download every blob once and never see half an image.  A cached reference is served without
touching the network (``pull="always"`` re-resolves the tag).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .._paths import cache_root
from .client import MIRROR_ENV, RegistryClient
from .errors import (
    ImageDigestMismatch,
    ImageError,
    ImageNotFound,
    RegistryError,
    RegistryUnreachable,
)
from .manifest import (
    Descriptor,
    ImageConfig,
    Platform,
    check_layers,
    host_platform,
    is_index,
    parse_config,
    parse_manifest,
    select_platform,
)
from .reference import Reference, parse_reference
from .unpack import LayerApplier, remove_tree

__all__ = ["CachedImage", "ImageRoot", "ImageStore"]

_BLOB_ATTEMPTS = 3
_PARALLEL_DOWNLOADS = 3  # as docker pull
_CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


@dataclasses.dataclass(frozen=True)
class ImageRoot:
    """An unpacked image, ready to be a sandbox's (read-only, shared) root filesystem.

    ``env``/``workdir``/``user`` come from the image config and are what the sandbox should
    start with; ``entrypoint``/``cmd`` are informational (as on Modal, the command is explicit).
    """

    reference: str  # normalised, e.g. "docker.io/library/redis:7-alpine"
    digest: str  # what the reference resolved to (an index digest for multi-platform images)
    manifest_digest: str  # this platform's image manifest
    config_digest: str  # the image id; the cache key of the root
    path: Path  # the root filesystem: never modify it
    env: Mapping[str, str]
    workdir: str | None
    user: str | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    platform: str
    lock_path: Path  # hold a shared flock on it while a sandbox uses the root (prune skips it)

    @contextlib.contextmanager
    def use(self) -> Iterator[ImageRoot]:
        """Mark the root in use (shared flock) so ``prune`` leaves it alone."""
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield self
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """One unpacked root in the cache, for ``list`` and ``prune``."""

    config_digest: str
    references: tuple[str, ...]
    size: int  # bytes of regular files in the root
    last_used: float
    path: Path
    in_use: bool


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"file-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tree_size(root: Path) -> int:
    """Bytes of regular files under ``root``, each hard-linked inode counted once."""
    total = 0
    seen: set[int] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
    return total


class ImageStore:
    """Pulls, verifies, unpacks and caches images.

    ``cache_dir`` defaults to ``cache_root()`` (``$PYTEST_MODAL_SANDBOX_CACHE_DIR``...); images
    live in its ``images/`` subdirectory.  ``platform`` ("linux/arm64") defaults to this
    machine's; ``mirror`` (host[:port] or URL) to ``$PYTEST_MODAL_SANDBOX_REGISTRY_MIRROR`` and
    applies to Docker Hub images only, falling back to Docker Hub when the mirror fails.
    ``progress`` receives one-line messages while an image is pulled (never on a cache hit).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        platform: str | Platform | None = None,
        mirror: str | None = None,
        timeout: float = 30.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        base = Path(cache_dir) if cache_dir is not None else cache_root()
        self.root = base / "images"
        self.platform = (
            platform
            if isinstance(platform, Platform)
            else Platform.parse(platform)
            if platform
            else host_platform()
        )
        self.mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
        self.timeout = timeout
        self.progress = progress
        self._blobs = self.root / "blobs" / "sha256"
        self._roots = self.root / "roots"
        self._refs = self.root / "refs"
        self._locks = self.root / "locks"
        self._tmp = self.root / "tmp"
        try:
            for d in (self._blobs, self._roots, self._refs, self._locks, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageError(
                f"cannot use the image cache {self.root}: {exc}; set "
                "$PYTEST_MODAL_SANDBOX_CACHE_DIR to a writable directory"
            ) from exc

    # -- public API ---------------------------------------------------------------------------

    def get(self, reference: str, *, pull: Literal["missing", "always"] = "missing") -> ImageRoot:
        """The unpacked image for ``reference``, pulled first unless cached.

        ``pull="missing"`` (default) serves a cached reference without network access;
        ``"always"`` asks the registry what the tag points to now (blobs stay cached).
        """
        ref, record = self._cached_ref(reference, pull)
        if record is not None:
            root = self._load_root(str(ref), record)
            if root is not None:
                return root
        with self._gc_lock(fcntl.LOCK_SH):
            return self._pull(ref)

    def pull(self, reference: str) -> ImageRoot:
        """Resolve ``reference`` at the registry now and make sure it is unpacked."""
        return self.get(reference, pull="always")

    def config(
        self, reference: str, *, pull: Literal["missing", "always"] = "missing"
    ) -> ImageConfig:
        """The image's runtime config (entrypoint, cmd, env, ...) without pulling its layers.

        A reference resolved before, by :meth:`get` or by this method, is answered from the
        cached (digest-verified) config blob without network access; otherwise, or with
        ``pull="always"``, it costs the manifest (and index) requests and the config blob, which
        are verified and cached as a pull would cache them.
        """
        ref, record = self._cached_ref(reference, pull)
        if record is not None:
            cached = self._cached_config(ref, str(record["config_digest"]))
            if cached is not None:
                return cached
        with self._gc_lock(fcntl.LOCK_SH):
            client, top, manifest_digest, config_desc, layers = self._manifest(ref)
            config = self._load_config(self._ensure_blob(client, ref, config_desc), ref, layers)
            self._write_ref(ref, top, manifest_digest, config_desc.digest)
        return dataclasses.replace(config, reference=str(ref), config_digest=config_desc.digest)

    def list(self) -> builtins.list[CachedImage]:
        """Cached roots, most recently used first."""
        refs: dict[str, builtins.list[str]] = {}
        for record in self._ref_records():
            refs.setdefault(str(record.get("config_digest")), []).append(str(record["reference"]))
        out: builtins.list[CachedImage] = []
        for entry in sorted(self._roots.iterdir()):
            meta = self._read_meta(entry)
            if meta is None:
                continue
            digest = str(meta["config_digest"])
            lock = entry / "use.lock"
            out.append(
                CachedImage(
                    config_digest=digest,
                    references=tuple(sorted(refs.get(digest, []))),
                    size=int(meta.get("size", 0)),
                    last_used=lock.stat().st_mtime if lock.exists() else 0.0,
                    path=entry / "rootfs",
                    in_use=self._in_use(lock),
                )
            )
        out.sort(key=lambda c: c.last_used, reverse=True)
        return out

    def prune(
        self, *, unused_for: float = 0.0, dry_run: bool = False
    ) -> builtins.list[CachedImage]:
        """Remove roots not used for ``unused_for`` seconds and not in use, then orphan blobs.

        Returns what was (or, with ``dry_run``, would be) removed.  Leftovers of interrupted
        pulls are cleaned up as well.
        """
        now = time.time()
        removed = [c for c in self.list() if not c.in_use and now - c.last_used >= unused_for]
        if dry_run:
            return removed
        with self._gc_lock(fcntl.LOCK_EX):
            self._remove(removed)
            self._collect_garbage()
        return removed

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        """Pulls hold it shared, prune exclusively: GC never takes a blob a pull just fetched."""
        fd = os.open(self._locks / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _remove(self, removed: builtins.list[CachedImage]) -> None:
        for image in removed:
            lock = FileLock(str(self._locks / f"root-{_hex(image.config_digest)}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                src = image.path.parent
                trash = self._tmp / f"trash-{secrets.token_hex(6)}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(src, trash)
                    remove_tree(trash)
            finally:
                lock.release()

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    # -- references ---------------------------------------------------------------------------

    def _cached_ref(self, reference: str, pull: str) -> tuple[Reference, dict[str, Any] | None]:
        """``reference`` parsed, and what it resolved to before unless ``pull="always"``."""
        if pull not in ("missing", "always"):
            raise ValueError(f"pull must be 'missing' or 'always', not {pull!r}")
        ref = parse_reference(reference)
        if pull == "always":
            return ref, None
        return ref, self._read_ref(ref) or self._find_digest(ref)

    def _ref_path(self, ref: Reference) -> Path:
        key = hashlib.sha256(f"{ref}|{self.platform}".encode()).hexdigest()[:40]
        return self._refs / f"{key}.json"

    def _read_ref(self, ref: Reference) -> dict[str, Any] | None:
        try:
            data = json.loads(self._ref_path(ref).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("reference") == str(ref) else None

    def _find_digest(self, ref: Reference) -> dict[str, Any] | None:
        """A pinned digest already pulled under another reference (content is the same)."""
        if ref.digest is None:
            return None
        for record in self._ref_records():
            if record.get("platform") == str(self.platform) and ref.digest in (
                record.get("digest"),
                record.get("manifest_digest"),
            ):
                return record
        return None

    def _ref_records(self) -> Iterator[dict[str, Any]]:
        for path in self._refs.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if isinstance(data, dict) and "reference" in data:
                    yield data

    # -- roots --------------------------------------------------------------------------------

    def _read_meta(self, root_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((root_dir / "image.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _in_use(lock: Path) -> bool:
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def _load_root(self, reference: str, record: Mapping[str, Any]) -> ImageRoot | None:
        root_dir = self._roots / _hex(str(record["config_digest"]))
        meta = self._read_meta(root_dir)
        if meta is None:
            return None
        lock = root_dir / "use.lock"
        with contextlib.suppress(OSError):
            os.utime(lock)
        return ImageRoot(
            reference=reference,
            digest=str(record["digest"]),
            manifest_digest=str(record["manifest_digest"]),
            config_digest=str(meta["config_digest"]),
            path=root_dir / "rootfs",
            env=dict(meta.get("env") or {}),
            workdir=meta.get("workdir"),
            user=meta.get("user"),
            entrypoint=tuple(meta["entrypoint"]) if meta.get("entrypoint") else None,
            cmd=tuple(meta["cmd"]) if meta.get("cmd") else None,
            platform=str(meta.get("platform") or ""),
            lock_path=lock,
        )

    # -- pulling ------------------------------------------------------------------------------

    def _clients(self, ref: Reference) -> builtins.list[RegistryClient]:
        hints = []
        if ref.is_docker_hub and not self.mirror:
            hints.append(f"set ${MIRROR_ENV} to a Docker Hub mirror (host[:port] or URL)")
        upstream = RegistryClient(
            ref.endpoint, display=ref.registry, timeout=self.timeout, hints=hints
        )
        if ref.is_docker_hub and self.mirror:
            mirror = RegistryClient(
                self.mirror,
                display=f"mirror {self.mirror}",
                timeout=self.timeout,
                lookup_credentials=False,
            )
            return [mirror, upstream]
        return [upstream]

    def _resolve(self, ref: Reference) -> tuple[RegistryClient, str, str, bytes, str]:
        """(client, top digest, manifest digest, manifest body, media type) for ``ref``."""
        errors: builtins.list[str] = []
        clients = self._clients(ref)
        for i, client in enumerate(clients):
            try:
                body, media_type, digest = client.manifest(ref.repository, ref.lookup)
                top = digest
                if is_index(body, media_type):
                    self._store_small_blob(digest, body)
                    desc = select_platform(body, f"image {ref}", self.platform)
                    body, media_type, digest = client.manifest(ref.repository, desc.digest)
                self._store_small_blob(digest, body)
                return client, top, digest, body, media_type
            except ImageDigestMismatch:
                raise
            except (RegistryError, ImageNotFound) as exc:
                if i == len(clients) - 1:
                    if errors:
                        raise type(exc)(f"{exc} (tried first: {'; '.join(errors)})") from exc
                    raise
                errors.append(f"{client.display}: {exc}")
        raise AssertionError("no registry client")  # pragma: no cover

    def _store_small_blob(self, digest: str, body: bytes) -> None:
        path = self._blobs / _hex(digest)
        if not path.exists():
            _write_atomic(path, body, self._tmp)

    def _ensure_blob(self, client: RegistryClient, ref: Reference, desc: Descriptor) -> Path:
        hexd = _hex(desc.digest)
        path = self._blobs / hexd
        if path.exists():
            return path
        with FileLock(str(self._locks / f"blob-{hexd}.lock")):
            if path.exists():
                return path
            tmp = self._tmp / f"blob-{hexd}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                for attempt in range(1, _BLOB_ATTEMPTS + 1):
                    resumed = tmp.exists() and tmp.stat().st_size > 0
                    try:
                        with open(tmp, "a+b") as out:
                            client.blob(ref.repository, desc.digest, out, size=desc.size)
                        os.replace(tmp, path)
                        break
                    except RegistryUnreachable:  # a dropped connection: the next one resumes
                        if attempt == _BLOB_ATTEMPTS:
                            raise
                        time.sleep(0.25 * attempt)
                    except ImageDigestMismatch:
                        if not resumed or attempt == _BLOB_ATTEMPTS:
                            raise
                        tmp.unlink()  # the resumed part did not fit: once more from the start
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def _manifest(
        self, ref: Reference
    ) -> tuple[RegistryClient, str, str, Descriptor, builtins.list[Descriptor]]:
        """(client, top digest, manifest digest, config, layers) of ``ref`` for this platform."""
        client, top, manifest_digest, body, media_type = self._resolve(ref)
        what = f"image {ref} ({manifest_digest})"
        config_desc, layers = parse_manifest(body, media_type, what)
        if config_desc.media_type and config_desc.media_type not in _CONFIG_TYPES:
            raise ImageError(
                f"{ref} is not a container image (its config is {config_desc.media_type!r})"
            )
        return client, top, manifest_digest, config_desc, layers

    def _load_config(
        self, path: Path, ref: Reference, layers: builtins.list[Descriptor]
    ) -> ImageConfig:
        config = parse_config(path.read_bytes(), f"config of image {ref}")
        check_layers(layers, config, f"image {ref}")
        return config

    def _cached_config(self, ref: Reference, config_digest: str) -> ImageConfig | None:
        """The config blob ``ref`` resolved to, if it is still cached and intact."""
        path = self._blobs / _hex(config_digest)
        try:
            body = path.read_bytes()
        except OSError:
            return None
        if "sha256:" + hashlib.sha256(body).hexdigest() != config_digest:
            path.unlink(missing_ok=True)  # damaged on disk: fetch it again
            return None
        config = parse_config(body, f"config of image {ref}")
        return dataclasses.replace(config, reference=str(ref), config_digest=config_digest)

    def _write_ref(
        self, ref: Reference, top: str, manifest_digest: str, config: str
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "reference": str(ref),
            "platform": str(self.platform),
            "digest": top,
            "manifest_digest": manifest_digest,
            "config_digest": config,
            "resolved_at": time.time(),
        }
        _write_atomic(self._ref_path(ref), json.dumps(record).encode(), self._tmp)
        return record

    def _pull(self, ref: Reference) -> ImageRoot:
        client, top, manifest_digest, config_desc, layers = self._manifest(ref)
        root_dir = self._roots / _hex(config_desc.digest)
        if not (root_dir / "image.json").exists():
            with FileLock(str(self._locks / f"root-{_hex(config_desc.digest)}.lock")):
                if not (root_dir / "image.json").exists():
                    self._build(client, ref, config_desc, layers, manifest_digest, root_dir)
        record = self._write_ref(ref, top, manifest_digest, config_desc.digest)
        root = self._load_root(str(ref), record)
        if root is None:  # pragma: no cover - pruned between build and load
            raise ImageError(f"image {ref} vanished from the cache while it was being pulled")
        return root

    def _build(
        self,
        client: RegistryClient,
        ref: Reference,
        config_desc: Descriptor,
        layers: builtins.list[Descriptor],
        manifest_digest: str,
        root_dir: Path,
    ) -> None:
        config = self._load_config(self._ensure_blob(client, ref, config_desc), ref, layers)
        total = sum(d.size for d in layers)
        self._say(f"pulling {ref}: {len(layers)} layer(s), {total / 2**20:.1f} MiB")
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        staging = self._tmp / f"root-{_hex(config_desc.digest)}-{tag}"
        # Layers download in parallel (latency-bound on real registries) and are unpacked in
        # order as soon as each one is in, so unpacking overlaps the remaining downloads.
        pool = ThreadPoolExecutor(max_workers=_PARALLEL_DOWNLOADS, thread_name_prefix="image-blob")
        try:
            futures = [pool.submit(self._ensure_blob, client, ref, d) for d in layers]
            rootfs = staging / "rootfs"
            rootfs.mkdir(parents=True)
            applier = LayerApplier(rootfs)
            work = zip(layers, futures, config.diff_ids, strict=True)
            for i, (desc, future, diff_id) in enumerate(work):
                blob = future.result()
                name = f"{i + 1}/{len(layers)} ({desc.digest[:19]}) of {ref}"
                self._say(f"unpacking layer {name}")
                try:
                    applier.apply(blob, diff_id=diff_id, name=name)
                except ImageError:
                    blob.unlink(missing_ok=True)  # never reuse a blob that failed to unpack
                    raise
            report = applier.finish()
            size = _tree_size(rootfs)
            meta: dict[str, Any] = {
                "config_digest": config_desc.digest,
                "manifest_digest": manifest_digest,
                "first_reference": str(ref),
                "layers": [d.digest for d in layers],
                "diff_ids": list(config.diff_ids),
                "env": dict(config.env),
                "workdir": config.workdir,
                "user": config.user,
                "entrypoint": list(config.entrypoint) if config.entrypoint else None,
                "cmd": list(config.cmd) if config.cmd else None,
                "platform": config.platform or str(self.platform),
                "size": size,
                "owners": {k: list(v) for k, v in report.owners.items()},
                "skipped": report.skipped,
                "unpacked_at": time.time(),
                "unpacked_as_root": os.geteuid() == 0,
            }
            (staging / "image.json").write_text(json.dumps(meta, indent=1))
            (staging / "use.lock").touch()
            os.rename(staging, root_dir)
            self._say(f"unpacked {ref} ({size / 2**20:.1f} MiB)")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            remove_tree(staging)
            raise
        finally:
            pool.shutdown(wait=True)

    # -- garbage ------------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        live_roots = {p.name for p in self._roots.iterdir() if (p / "image.json").exists()}
        keep: set[str] = set()
        for name in live_roots:
            meta = self._read_meta(self._roots / name) or {}
            keep.add(name)
            keep.update(_hex(d) for d in meta.get("layers", []))
            keep.add(_hex(str(meta.get("manifest_digest", "x:x"))))
        for path in self._refs.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                config_hex = _hex(str(record["config_digest"]))
            except (OSError, ValueError, KeyError, IndexError):
                path.unlink(missing_ok=True)
                continue
            if config_hex not in live_roots:
                path.unlink(missing_ok=True)
            else:
                keep.add(_hex(str(record.get("digest", "x:x"))))
        for blob in self._blobs.iterdir():
            if blob.name in keep:
                continue
            lock = FileLock(str(self._locks / f"blob-{blob.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                blob.unlink(missing_ok=True)
            finally:
                lock.release()
        for leftover in self._tmp.iterdir():
            kind, _, rest = leftover.name.partition("-")
            if kind in ("blob", "root"):
                lock = FileLock(str(self._locks / f"{kind}-{rest.split('-')[0]}.lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    remove_tree(leftover)
                finally:
                    lock.release()
            elif kind == "trash" or time.time() - leftover.lstat().st_mtime > 3600:
                remove_tree(leftover)
