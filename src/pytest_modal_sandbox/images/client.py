"""A small registry client (distribution API v2 / OCI distribution spec) on stdlib ``urllib``.

Why not a library or a tool: ``skopeo``/``umoci`` would add a system package every user must
install (and the cache, locking and verification would still be ours, since they must be
shared by concurrent xdist workers).  python-dxf 12 and oras 0.2 were measured against this
client on the same registry (``bench/bench_images.py --libraries``, docs/reference/
image-registry.md): neither is faster, both bring requests (+3 and +5 MB of packages), dxf
refuses any authentication over plain HTTP (every loopback test registry) and matches
platforms exactly, oras verifies no digest, selects no platform and retries an unreachable
registry for minutes.  A pull needs four requests (token, manifest, blob, tags list), so a
stdlib client keeps the plugin dependency-free and import-light.

Only pulls are implemented: ``GET /v2/<name>/manifests/<ref>``, ``GET /v2/<name>/blobs/<digest>``
with bearer-token (``WWW-Authenticate: Bearer``) or basic auth.  Loopback registries
(``localhost``, ``127.0.0.0/8``, ``::1``) and those listed in
``$PYTEST_MODAL_SANDBOX_INSECURE_REGISTRIES`` (comma-separated ``host[:port]``) are spoken to over
plain HTTP, everything else over HTTPS.  Every byte is verified: blobs against their digest
while streaming, manifests against a pinned digest or the registry's ``Docker-Content-Digest``.
A 429/5xx answer is asked again (``Retry-After`` up to 10 s), and a cut blob download resumes
with a ``Range`` request (:meth:`RegistryClient.blob`; ``store.py`` retries).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import ipaddress
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import IO, Any

from .auth import Credentials, find_credentials, parse_challenge
from .errors import (
    HOST_MAPPING_HINT,
    ImageAccessDenied,
    ImageDigestMismatch,
    ImageNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)

__all__ = [
    "INSECURE_ENV",
    "MANIFEST_TYPES",
    "MIRROR_ENV",
    "RegistryClient",
    "is_plain_http",
]

INSECURE_ENV = "PYTEST_MODAL_SANDBOX_INSECURE_REGISTRIES"
MIRROR_ENV = "PYTEST_MODAL_SANDBOX_REGISTRY_MIRROR"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
_USER_AGENT = "pytest-modal-sandbox/0.1 (python-urllib)"
_CHUNK = 1 << 20
_MAX_MANIFEST = 4 << 20  # the distribution spec's limit for manifests
# Answers worth asking again: rate limits and overloaded or restarting registries/CDNs.
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
_ATTEMPTS = 3  # per request, as many as a dropped blob download gets in store.py
_MAX_RETRY_AFTER = 10.0  # seconds; a registry that asks for longer fails at once, saying so


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def is_plain_http(endpoint: str) -> bool:
    """Loopback and explicitly insecure registries are spoken to over plain HTTP."""
    listed = {h.strip().lower() for h in os.environ.get(INSECURE_ENV, "").split(",") if h.strip()}
    if endpoint.lower() in listed:
        return True
    host = urllib.parse.urlsplit(f"//{endpoint}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _GaveUp(urllib.error.HTTPError):
    """A 429/5xx answer that was not asked again, with why (for the error message)."""

    def __init__(self, exc: urllib.error.HTTPError, note: str) -> None:
        super().__init__(exc.url, exc.code, exc.msg, exc.hdrs, exc.fp)
        self.note = note


def _api_error_codes(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
        return [str(e.get("code", "")) for e in data.get("errors", []) if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError):
        return []


def _short_body(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"


class RegistryClient:
    """Pulls from one registry endpoint; holds bearer tokens for the repositories it touched.

    ``display`` is the registry's name in error messages (``docker.io`` for
    ``registry-1.docker.io``); ``credentials`` defaults to :func:`find_credentials`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        display: str | None = None,
        credentials: Credentials | None = None,
        lookup_credentials: bool = True,
        timeout: float = 30.0,
        hints: Sequence[str] = (),
    ) -> None:
        if "://" in endpoint:  # a mirror may be given as a URL
            parts = urllib.parse.urlsplit(endpoint)
            scheme, endpoint = parts.scheme, parts.netloc
        else:
            scheme = "http" if is_plain_http(endpoint) else "https"
        self.endpoint = endpoint
        self.display = display or endpoint
        self.base_url = f"{scheme}://{endpoint}"
        self.timeout = timeout
        self.hints = tuple(hints)
        self._credentials = credentials
        self._lookup = lookup_credentials and credentials is None
        self._tokens: dict[str, str] = {}  # repository -> "Bearer ..." / "Basic ..."
        handlers: list[urllib.request.BaseHandler] = []
        if scheme == "http" and is_plain_http(endpoint):
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy loopback traffic
        self._opener = urllib.request.build_opener(*handlers)

    # -- credentials and auth ---------------------------------------------------------------

    def _creds(self) -> Credentials | None:
        if self._lookup:
            self._credentials = find_credentials(self.display)
            self._lookup = False
        return self._credentials

    def _unreachable(self, url: str, exc: BaseException) -> RegistryUnreachable:
        reason = getattr(exc, "reason", exc)
        fixes = [*self.hints, HOST_MAPPING_HINT]
        if isinstance(reason, ssl.SSLError):
            fixes.insert(
                0,
                "if the registry uses a private CA, point $SSL_CERT_FILE at a bundle "
                "that includes it",
            )
        return RegistryUnreachable(
            f"cannot reach registry {self.display} ({url}): {reason}. Check the network or the "
            "registry address; " + "; ".join(fixes)
        )

    def _open(self, url: str, headers: dict[str, str], auth: str | None) -> Any:
        """One GET; a 429 or 5xx answer is asked again (backing off, or after the
        ``Retry-After`` it names when that is at most 10 s), up to three attempts in all."""
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **headers})
        if auth:  # unredirected: blob redirects to a CDN must not carry our token
            request.add_unredirected_header("Authorization", auth)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code not in _TRANSIENT:
                    raise
                wait = _retry_after(exc.headers.get("Retry-After"))
                if wait is not None and wait > _MAX_RETRY_AFTER:
                    raise _GaveUp(exc, f"; it asked to retry after {wait:.0f} s") from None
                if attempt == _ATTEMPTS:
                    raise _GaveUp(exc, f" ({attempt} attempts)") from None
                exc.close()
                time.sleep(wait if wait is not None else 0.5 * attempt)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise self._unreachable(url, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _authorize(self, repository: str, challenge_header: str, url: str) -> str:
        challenge = parse_challenge(challenge_header)
        creds = self._creds()
        if challenge.scheme == "basic":
            if creds is None:
                raise ImageAccessDenied(
                    f"registry {self.display} needs credentials to pull {repository}: "
                    "run 'docker login' or set $PYTEST_MODAL_SANDBOX_REGISTRY_AUTH"
                )
            return creds.basic_header()
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise RegistryAuthError(
                f"registry {self.display} asked for unsupported authentication "
                f"{challenge_header!r} at {url}"
            )
        query = {"scope": challenge.params.get("scope") or f"repository:{repository}:pull"}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        realm = challenge.params["realm"]
        token_url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        try:
            with self._open(token_url, {}, creds.basic_header() if creds else None) as resp:
                data = json.loads(resp.read(_MAX_MANIFEST))
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code in (401, 403):
                who = f"the credentials for {creds.username!r}" if creds else "anonymous access"
                raise RegistryAuthError(
                    f"the token server of {self.display} ({realm}) refused {who} to "
                    f"{repository}: HTTP {exc.code} {_short_body(body)}"
                ) from None
            raise RegistryError(
                f"token server {realm} of {self.display} failed: HTTP {exc.code} "
                f"{_short_body(body)}"
            ) from None
        except ValueError as exc:
            raise RegistryError(f"token server {realm} returned invalid JSON: {exc}") from exc
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm} of {self.display} returned no token")
        return f"Bearer {token}"

    def _get(self, repository: str, path: str, headers: dict[str, str]) -> Any:
        """GET ``/v2/<repository>/<path>``, answering one auth challenge; returns the response."""
        url = f"{self.base_url}/v2/{repository}/{path}"
        for attempt in (1, 2):
            try:
                return self._open(url, headers, self._tokens.get(repository))
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1:
                    challenge = exc.headers.get("WWW-Authenticate", "")
                    exc.close()
                    self._tokens[repository] = self._authorize(repository, challenge, url)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_error(self, exc: urllib.error.HTTPError, what: str, repository: str) -> Exception:
        body = exc.read()
        codes = _api_error_codes(body)
        if exc.code in (401, 403):
            creds = self._credentials
            why = (
                f"the credentials of {creds.username!r} were refused, or the repository does "
                "not exist"
                if creds is not None
                else "the repository does not exist or needs credentials (docker login, or "
                "$PYTEST_MODAL_SANDBOX_REGISTRY_AUTH)"
            )
            return ImageAccessDenied(
                f"pull access denied for {self.display}/{repository}: {why}"
                f" [HTTP {exc.code} {', '.join(codes) or _short_body(body)}]"
            )
        when = exc.note if isinstance(exc, _GaveUp) else ""
        if exc.code == 429:
            return RegistryError(
                f"registry {self.display} rate-limited the pull of {what} (HTTP 429{when}): "
                f"log in, or use a mirror (${MIRROR_ENV}), " + HOST_MAPPING_HINT
            )
        return RegistryError(
            f"registry {self.display} failed on {what}: HTTP {exc.code} "
            f"{', '.join(codes) or _short_body(body)}{when}"
        )

    # -- the API ------------------------------------------------------------------------------

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """Fetch a manifest or index by tag or digest: ``(body, media type, sha256 digest)``.

        A pinned digest is verified here; for a tag the digest is computed from the body.
        """
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        what = f"{self.display}/{repository}:{reference}"
        try:
            with self._get(repository, f"manifests/{reference}", headers) as resp:
                body = resp.read(_MAX_MANIFEST + 1)
                media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
                claimed = (resp.headers.get("Docker-Content-Digest") or "").strip()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise self._not_found(exc, repository, reference) from None
            raise self._http_error(exc, f"manifest {what}", repository) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(self.base_url, exc) from exc
        if len(body) > _MAX_MANIFEST:
            raise RegistryError(f"manifest {what} is larger than {_MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageDigestMismatch(
                f"manifest {what} has digest {digest}, not the {reference} that was asked for; "
                "it was not used"
            )
        if claimed.startswith("sha256:") and claimed != digest:  # a tag: the registry's word
            raise ImageDigestMismatch(
                f"manifest {what} has digest {digest}, but the registry sent it as {claimed} "
                "(Docker-Content-Digest); it was not used. A proxy or the registry corrupted it."
            )
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"manifest {what} is not JSON: {exc}") from exc
        if isinstance(parsed, dict) and isinstance(parsed.get("mediaType"), str):
            media_type = parsed["mediaType"]  # the body is authoritative
        return body, media_type, digest

    def _not_found(
        self, exc: urllib.error.HTTPError, repository: str, reference: str
    ) -> ImageNotFound:
        codes = _api_error_codes(exc.read())
        name = f"{self.display}/{repository}"
        if "NAME_UNKNOWN" in codes:
            return ImageNotFound(f"image {name} does not exist in registry {self.display}")
        tags = self.tags(repository)
        if tags is None:
            return ImageNotFound(f"image {name} does not exist in registry {self.display}")
        kind = "digest" if reference.startswith("sha256:") else "tag"
        shown = ", ".join(sorted(tags)[:20]) + (" ..." if len(tags) > 20 else "")
        return ImageNotFound(
            f"image {name} has no {kind} {reference!r}"
            + (f" (available tags: {shown})" if tags else " (it has no tags)")
        )

    def tags(self, repository: str) -> list[str] | None:
        """The repository's tags, or None if the registry does not know the repository."""
        try:
            with self._get(repository, "tags/list?n=100", {"Accept": "application/json"}) as resp:
                data = json.loads(resp.read(_MAX_MANIFEST))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403, 404):
                return None
            raise self._http_error(exc, f"tags of {repository}", repository) from None
        except ValueError:
            return []
        tags = data.get("tags") if isinstance(data, dict) else None
        return [str(t) for t in tags] if isinstance(tags, list) else []

    def blob(self, repository: str, digest: str, out: IO[bytes], *, size: int | None) -> int:
        """Stream blob ``digest`` into ``out``; raise :class:`ImageDigestMismatch` if it differs.

        With a readable ``out`` that appends (``"a+b"``), bytes it already holds, from a
        download that was cut, are hashed and only the rest is asked for (``Range``); a
        registry that answers with the whole blob instead is read from the start.  Returns the
        byte count.  ``out`` may hold partial data on error: the caller resumes from it or
        discards it.
        """
        if not digest.startswith("sha256:"):
            raise RegistryError(f"blob {digest} uses an unsupported digest algorithm")
        what = f"blob {digest} of {self.display}/{repository}"
        hasher = hashlib.sha256()
        if out.readable():  # a write-only ``out`` is taken to be empty
            out.seek(0)
            while chunk := out.read(_CHUNK):
                hasher.update(chunk)
        total = out.tell()
        if size is not None and total > size:  # not a prefix of this blob: start again
            out.truncate(0)
            hasher, total = hashlib.sha256(), 0
        expected: int | None = size
        if size is None or total < size:
            headers = {"Range": f"bytes={total}-"} if total else {}
            try:
                with self._get(repository, f"blobs/{digest}", headers) as resp:
                    served = str(resp.headers.get("Content-Range") or "")
                    if total and not served.startswith(f"bytes {total}-"):
                        out.truncate(0)  # what we had is of no use with this answer
                        if resp.status == 206:  # a range we did not ask for
                            raise ConnectionError(f"{what}: asked for bytes {total}-, got {served}")
                        hasher, total = hashlib.sha256(), 0  # a 200: the whole blob
                    length = resp.headers.get("Content-Length")
                    if expected is None and length and length.isdigit():
                        expected = total + int(length)
                    while chunk := resp.read(_CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
                        if size is not None and total > size:
                            break
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise RegistryError(
                        f"registry {self.display} lost {what} (HTTP 404 BLOB_UNKNOWN): the image "
                        "is broken or was deleted while pulling"
                    ) from None
                raise self._http_error(exc, what, repository) from None
            except (OSError, http.client.HTTPException) as exc:
                raise self._unreachable(self.base_url, exc) from exc
        if expected is not None and total < expected:  # read(n) does not raise on a cut
            raise self._unreachable(
                self.base_url,
                ConnectionError(f"connection closed after {total} of {expected} bytes of {what}"),
            )
        actual = "sha256:" + hasher.hexdigest()
        if (size is not None and total != size) or actual != digest:
            raise ImageDigestMismatch(
                f"{what} does not match its digest (got {actual}, {total} bytes"
                + (f", expected {size}" if size is not None else "")
                + "); it was discarded. The registry or a proxy corrupted it."
            )
        return total
