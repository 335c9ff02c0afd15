"""A real OCI registry on 127.0.0.1 for tests, and a builder for images made from busybox.

Starts Debian's ``docker-registry`` (distribution 2.8) with filesystem storage in a temp dir on an
ephemeral port, optionally behind htpasswd basic auth or bearer-token auth (with a tiny token
server in this process that signs JWTs with ``openssl``).  Images are built here from
``/bin/busybox`` (busybox-static) and pushed with the registry HTTP API (monolithic uploads).

Use from any test directory's ``conftest.py``::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # -> tests/
    from registry import registry, registry_factory  # noqa: F401  (re-exported fixtures)

then ``registry.push_image("team/app", "v1", layers=[busybox_layer()], env={...})`` returns a
:class:`PushedImage` whose ``.reference`` (``127.0.0.1:<port>/team/app:v1``) any image consumer
can pull.  ``registry.requests()`` parses the registry's access log (to count blob downloads).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "HAVE_OPENSSL",
    "HAVE_ZSTD",
    "HTPASSWD_PASSWORD",
    "HTPASSWD_USER",
    "FlakyProxy",
    "LocalRegistry",
    "PushedImage",
    "build_layer",
    "busybox_layer",
    "device",
    "directory",
    "fifo",
    "file",
    "hardlink",
    "needs_openssl",
    "needs_zstd",
    "opaque",
    "registry",
    "registry_factory",
    "symlink",
    "whiteout",
]

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HAVE_ZSTD = shutil.which("zstd") is not None  # apt package zstd: builds zstd test layers
HAVE_OPENSSL = shutil.which("openssl") is not None  # apt package openssl: signs test tokens
needs_zstd = pytest.mark.skipif(not HAVE_ZSTD, reason="the zstd command is missing (apt zstd)")
needs_openssl = pytest.mark.skipif(
    not HAVE_OPENSSL, reason="the openssl command is missing (apt openssl)"
)
BUSYBOX = "/bin/busybox"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    None: "application/vnd.oci.image.layer.v1.tar",
}

# htpasswd needs bcrypt; this is bcrypt("s3cret"), cost 4 so each request stays cheap (made once
# with crypt.crypt(..., crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))).
HTPASSWD_USER = "alice"
HTPASSWD_PASSWORD = "s3cret"
_HTPASSWD_LINE = "alice:$2b$04$WzFWGbxqpGjtr4ocvHnsIeW3rmt.ZiFXIzzj5rg88aVv3jkKFzzxu"


# -- layer entries ------------------------------------------------------------------------------


def _info(path: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 1_700_000_000
    return info


Entry = tuple[tarfile.TarInfo, bytes | None]


def file(
    path: str, data: bytes | str = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    info = _info(path, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(raw)
    return info, raw


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return _info(path, tarfile.DIRTYPE, mode, uid, gid), None


def symlink(path: str, target: str) -> Entry:
    info = _info(path, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return info, None


def hardlink(path: str, target: str) -> Entry:
    info = _info(path, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return info, None


def fifo(path: str, *, mode: int = 0o644) -> Entry:
    return _info(path, tarfile.FIFOTYPE, mode), None


def device(path: str, major: int = 1, minor: int = 3) -> Entry:
    info = _info(path, tarfile.CHRTYPE, 0o666)
    info.devmajor, info.devminor = major, minor
    return info, None


def whiteout(path: str) -> Entry:
    """Delete ``path`` (from lower layers)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(dir_path: str) -> Entry:
    """Hide everything lower layers put in ``dir_path``."""
    return file(f"{dir_path.rstrip('/')}/.wh..wh..opq")


def busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and "/" not in a and a != "busybox"]


def busybox_layer() -> list[Entry]:
    """``/bin/busybox`` plus a symlink per applet, and the usual top-level directories."""
    data = Path(BUSYBOX).read_bytes()
    entries = [directory(d) for d in ("bin", "etc", "root", "tmp", "usr", "usr/bin", "var")]
    entries[3] = directory("tmp", mode=0o1777)
    entries.append(file("bin/busybox", data, mode=0o755))
    entries += [symlink(f"bin/{a}", "busybox") for a in busybox_applets()]
    entries.append(file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(file("etc/group", "root:x:0:\n"))
    return entries


def build_layer(
    entries: Sequence[Entry] | bytes, compression: str | None = "gzip"
) -> tuple[bytes, str]:
    """(blob, diff_id) for a layer; ``entries`` may also be a ready-made raw tar."""
    if isinstance(entries, bytes):
        raw = entries
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in entries:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        raw = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    if compression == "gzip":
        blob = gzip.compress(raw, mtime=0)
    elif compression == "zstd":
        blob = subprocess.run(
            ["zstd", "-q", "-c"], input=raw, capture_output=True, check=True
        ).stdout
    elif compression is None:
        blob = raw
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return blob, diff_id


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the registry -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PushedImage:
    reference: str  # "127.0.0.1:PORT/name:tag"
    name: str
    tag: str
    digest: str  # manifest (or index) digest
    config_digest: str
    layer_digests: tuple[str, ...]

    @property
    def by_digest(self) -> str:
        return self.reference.rsplit(":", 1)[0] + "@" + self.digest


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TokenServer:
    """Issues registry JWTs (RS256, x5c) like Docker Hub's auth server; counts its requests."""

    def __init__(
        self,
        workdir: Path,
        service: str,
        issuer: str,
        users: Mapping[str, str],
        anonymous_pull: Sequence[str],
    ) -> None:
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=test-token",
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.service, self.issuer = service, issuer
        self.users = dict(users)
        self.anonymous_pull = tuple(anonymous_pull)
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _sign(self, claims: dict[str, Any]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{b64(sig)}"

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        user = None
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append({"user": name, "ok": False, "query": query})
                req.send_response(401)
                req.end_headers()
                return
            user = name
        self.requests.append({"user": user, "ok": True, "query": query})
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if user is not None:
                granted = actions.split(",")
            elif name.startswith(self.anonymous_pull):
                granted = [a for a in actions.split(",") if a == "pull"]
            else:
                granted = []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        token = self._sign(
            {
                "iss": self.issuer,
                "sub": user or "",
                "aud": self.service,
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": secrets.token_hex(8),
                "access": access,
            }
        )
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class LocalRegistry:
    """A ``docker-registry`` process on 127.0.0.1.  ``auth``: None, "htpasswd" or "token"."""

    def __init__(
        self, workdir: Path, *, auth: str | None = None, anonymous_pull: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.token_server: _TokenServer | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._auth_header: str | None = None
        self._push_tokens: dict[str, str] = {}
        auth_yaml = ""
        if auth == "htpasswd":
            (workdir / "htpasswd").write_text(_HTPASSWD_LINE + "\n")
            auth_yaml = f"auth:\n  htpasswd:\n    realm: test\n    path: {workdir / 'htpasswd'}\n"
            creds = f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()
            self._auth_header = "Basic " + base64.b64encode(creds).decode()
        elif auth == "token":
            self.token_server = _TokenServer(
                workdir,
                "test-registry",
                "test-issuer",
                {HTPASSWD_USER: HTPASSWD_PASSWORD},
                anonymous_pull,
            )
            auth_yaml = (
                "auth:\n  token:\n"
                f"    realm: {self.token_server.realm}\n    service: test-registry\n"
                f"    issuer: test-issuer\n    rootcertbundle: {self.token_server.cert}\n"
            )
        elif auth is not None:
            raise ValueError(f"unknown auth {auth!r}")
        self.log_path = workdir / "access.log"
        last_error = ""
        for _ in range(5):
            self.port = _free_port()
            self.host = f"127.0.0.1:{self.port}"
            self.url = f"http://{self.host}"
            config = workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
                "  delete:\n    enabled: true\n"
                "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                f"http:\n  addr: {self.host}\n  secret: {secrets.token_hex(8)}\n" + auth_yaml
            )
            with open(self.log_path, "ab") as out, open(workdir / "registry.err", "ab") as err:
                self.proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(config)],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            self.proc.kill()
            self.proc.wait()
            last_error = (workdir / "registry.err").read_text()[-2000:]
        self.close()
        raise RuntimeError(f"docker-registry did not start: {last_error}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token_server is not None:
            self.token_server.close()
            self.token_server = None

    # -- HTTP -----------------------------------------------------------------------------------

    def _authorization(self, name: str, challenge: str | None) -> str | None:
        if self.auth == "htpasswd":
            return self._auth_header
        if self.auth == "token":
            if name not in self._push_tokens:
                assert self.token_server is not None
                scope = urllib.parse.quote(f"repository:{name}:pull,push")
                creds = base64.b64encode(f"{HTPASSWD_USER}:{HTPASSWD_PASSWORD}".encode()).decode()
                req = urllib.request.Request(
                    f"{self.token_server.realm}?service=test-registry&scope={scope}",
                    headers={"Authorization": f"Basic {creds}"},
                )
                with _opener.open(req, timeout=10) as resp:
                    self._push_tokens[name] = "Bearer " + json.loads(resp.read())["token"]
            return self._push_tokens[name]
        return None

    def http(
        self,
        method: str,
        path: str,
        *,
        name: str = "",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = path if path.startswith("http") else self.url + path
        hdrs = dict(headers or {})
        auth = self._authorization(name, None) if name else None
        if auth:
            hdrs["Authorization"] = auth
        req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with _opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def push_blob(self, name: str, data: bytes) -> str:
        digest = _digest(data)
        status, _, _ = self.http("HEAD", f"/v2/{name}/blobs/{digest}", name=name)
        if status == 200:
            return digest
        status, headers, body = self.http("POST", f"/v2/{name}/blobs/uploads/", name=name, data=b"")
        assert status == 202, (status, body)
        location = headers["Location"]
        if not location.startswith("http"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        status, _, body = self.http(
            "PUT",
            f"{location}{sep}digest={digest}",
            name=name,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert status == 201, (status, body)
        return digest

    def put_manifest(self, name: str, ref: str, body: bytes, media_type: str) -> str:
        status, _, resp = self.http(
            "PUT",
            f"/v2/{name}/manifests/{ref}",
            name=name,
            data=body,
            headers={"Content-Type": media_type},
        )
        assert status == 201, (status, resp)
        return _digest(body)

    def push_image(
        self,
        name: str,
        tag: str,
        layers: Sequence[Sequence[Entry] | bytes] = (),
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        cmd: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        user: str | None = None,
        compression: str | None = "gzip",
        architecture: str = "amd64",
        variant: str | None = None,
        docker_media_types: bool = False,
        config_extra: Mapping[str, Any] | None = None,
    ) -> PushedImage:
        """Build and push an image; ``layers`` default to one busybox layer.

        ``config_extra`` adds raw keys to the config's ``config`` object (``ExposedPorts``...).
        """
        if not layers:
            layers = [busybox_layer()]
        blobs, diff_ids, descs = [], [], []
        for entries in layers:
            blob, diff_id = build_layer(entries, compression)
            blobs.append(blob)
            diff_ids.append(diff_id)
        for blob in blobs:
            digest = self.push_blob(name, blob)
            descs.append(
                {
                    "mediaType": (
                        LAYER_TYPES[compression]
                        if not docker_media_types
                        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    ),
                    "digest": digest,
                    "size": len(blob),
                }
            )
        config: dict[str, Any] = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": [f"{k}={v}" for k, v in (env or {}).items()]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if variant:
            config["variant"] = variant
        for key, value in (
            ("WorkingDir", workdir),
            ("User", user),
            ("Cmd", list(cmd) if cmd else None),
            ("Entrypoint", list(entrypoint) if entrypoint else None),
        ):
            if value is not None:
                config["config"][key] = value
        config["config"].update(config_extra or {})
        config_body = json.dumps(config).encode()
        config_digest = self.push_blob(name, config_body)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker_media_types else OCI_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG if docker_media_types else OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_body),
            },
            "layers": descs,
        }
        body = json.dumps(manifest).encode()
        media = DOCKER_MANIFEST if docker_media_types else OCI_MANIFEST
        digest = self.put_manifest(name, tag, body, media)
        return PushedImage(
            f"{self.host}/{name}:{tag}",
            name,
            tag,
            digest,
            config_digest,
            tuple(d["digest"] for d in descs),
        )

    def push_index(
        self,
        name: str,
        tag: str,
        images: Mapping[str, PushedImage],
        *,
        docker_media_types: bool = False,
    ) -> PushedImage:
        """A manifest list / OCI index over already pushed images, keyed "os/arch[/variant]"."""
        entries = []
        for platform, image in images.items():
            parts = platform.split("/")
            status, _, body = self.http(
                "GET",
                f"/v2/{image.name}/manifests/{image.digest}",
                name=image.name,
                headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
            )
            assert status == 200, (status, body)
            plat: dict[str, str] = {"os": parts[0], "architecture": parts[1]}
            if len(parts) > 2:
                plat["variant"] = parts[2]
            entries.append(
                {
                    "mediaType": json.loads(body)["mediaType"],
                    "digest": image.digest,
                    "size": len(body),
                    "platform": plat,
                }
            )
        media = DOCKER_LIST if docker_media_types else OCI_INDEX
        index = {"schemaVersion": 2, "mediaType": media, "manifests": entries}
        digest = self.put_manifest(name, tag, json.dumps(index).encode(), media)
        return PushedImage(f"{self.host}/{name}:{tag}", name, tag, digest, "", ())

    def corrupt_blob(self, digest: str) -> None:
        """Flip a byte of a stored blob: the registry then serves bytes that fail the digest."""
        hexd = digest.split(":", 1)[1]
        path = (
            self.workdir
            / "data"
            / "docker"
            / "registry"
            / "v2"
            / "blobs"
            / "sha256"
            / hexd[:2]
            / hexd
            / "data"
        )
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    # -- access log -----------------------------------------------------------------------------

    _LINE = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d{3})')

    def requests(self) -> list[Request]:
        """Every request the registry logged so far (waits until the log is flushed)."""
        marker = f"/v2/?mark={secrets.token_hex(6)}"
        self.http("GET", marker)
        deadline = time.monotonic() + 10
        while True:
            text = self.log_path.read_text(errors="replace")
            if marker in text or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        out = []
        for line in text.splitlines():
            m = self._LINE.search(line)
            if m and "?mark=" not in m.group(2):
                out.append(Request(m.group(1), m.group(2), int(m.group(3))))
        return out

    def blob_gets(self, name: str | None = None) -> dict[str, int]:
        """digest -> number of successful GETs of that blob (optionally for one repository)."""
        counts: dict[str, int] = {}
        for r in self.requests():
            m = re.match(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$", r.path)
            if r.method == "GET" and r.status == 200 and m and (name is None or m[1] == name):
                counts[m[2]] = counts.get(m[2], 0) + 1
        return counts


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Cdn:
    """Serves blobs at signed-looking URLs on ``localhost`` and records each request's headers."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(dict(self.headers.items()))
                body = outer.blobs.get(urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class FlakyProxy:
    """An HTTP front for a registry, passing the client's auth through.

    It cuts the next ``drop_blobs`` blob downloads in half; with ``cdn=True`` it answers blob
    GETs with a 307 to another host (``self.cdn``), like Docker Hub's CDN redirects.
    ``answers`` are (status, headers) it gives the next requests instead of forwarding them (a
    429 or 503 with ``Retry-After``); ``tamper_manifests`` adds a byte to manifests it serves
    (valid JSON, another digest).  ``host`` replaces the registry's host in references;
    ``blob_gets`` counts blob GETs seen, ``ranges`` their ``Range`` headers (None: none),
    ``statuses`` every (path, status) answered and ``authorized`` how many requests carried an
    Authorization header.
    """

    def __init__(
        self,
        upstream: LocalRegistry,
        drop_blobs: int = 0,
        *,
        cdn: bool = False,
        answers: Sequence[tuple[int, Mapping[str, str]]] = (),
        tamper_manifests: bool = False,
    ) -> None:
        self.upstream = upstream
        self.drop_blobs = drop_blobs
        self.answers = list(answers)
        self.tamper_manifests = tamper_manifests
        self.blob_gets = 0
        self.ranges: list[str | None] = []
        self.statuses: list[tuple[str, int]] = []
        self.authorized = 0
        self.cdn = _Cdn() if cdn else None
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._forward(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        with self._lock:
            canned = self.answers.pop(0) if self.answers else None
        if canned is not None:
            self.statuses.append((req.path, canned[0]))
            req.send_response(canned[0])
            for key, value in canned[1].items():
                req.send_header(key, value)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        wanted = ("accept", "authorization", "range" if self.cdn is None else "")
        headers = {k: v for k, v in req.headers.items() if k.lower() in wanted}
        status, resp_headers, body = self.upstream.http("GET", req.path, headers=headers)
        self.statuses.append((req.path, status))
        drop = False
        if "authorization" in {k.lower() for k in headers}:
            with self._lock:
                self.authorized += 1
        if self.tamper_manifests and "/manifests/" in req.path and status == 200:
            body += b"\n"
        if "/blobs/" in req.path and status in (200, 206):
            with self._lock:
                self.blob_gets += 1
                self.ranges.append(req.headers.get("Range"))
                if self.drop_blobs > 0:
                    self.drop_blobs -= 1
                    drop = True
            if self.cdn is not None:
                digest = req.path.rsplit("/", 1)[-1]
                self.cdn.blobs[digest] = body
                req.send_response(307)
                req.send_header("Location", f"{self.cdn.base}/cdn/{digest}?signature=abc")
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
        req.send_response(status)
        for key, value in resp_headers.items():
            if key.lower() not in (
                "content-length",
                "connection",
                "transfer-encoding",
                "date",
                "server",
            ):
                req.send_header(key, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body[: len(body) // 2] if drop else body)
        if drop:
            req.wfile.flush()
            req.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        if self.cdn is not None:
            self.cdn.close()


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A session-wide registry without auth (each xdist worker gets its own)."""
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    reg = LocalRegistry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``registry_factory(auth="token", anonymous_pull=("public/",))``: extra registries."""
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    started: list[LocalRegistry] = []

    def make(**kwargs: Any) -> LocalRegistry:
        reg = LocalRegistry(tmp_path_factory.mktemp("registry"), **kwargs)
        started.append(reg)
        return reg

    try:
        yield make
    finally:
        for reg in started:
            reg.close()
