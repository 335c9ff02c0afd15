"""Object ids and tokens shaped the way the real ``modal`` client expects them.

The client routes on id *shape* (``sb-`` + 22 alphanumerics means a V1 sandbox; anything else
is V2), validates prefixes when hydrating, and base64-decodes the JWT payloads it is given to
read their ``exp``.  Getting these shapes wrong makes the client take the wrong code path, so
they live in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import string
import time
from typing import Any

from ..runtime.ids import ulid

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
OBJECT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # Modal's rule for sandbox, volume... names


def _base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def object_id(prefix: str) -> str:
    """``<prefix>-`` + 22 alphanumerics, the shape of Modal's app/image/secret/env ids.

    ``ap-`` ids must match ``^ap-[a-zA-Z0-9]{22}$`` or the client treats them as names.
    """
    return f"{prefix}-{_base62(22)}"


def sandbox_id() -> str:
    """A V2 sandbox id: ``sb-`` + 26-char ULID (never 22 chars, which would mean V1)."""
    return f"sb-{ulid()}"


def task_id() -> str:
    """A V2 task id: ``ta-`` + ULID + ``V`` (the client's ``_is_v2_task_id`` shape)."""
    return f"ta-{ulid()}V"


def is_v1_sandbox_id(value: str) -> bool:
    """Mirror of the client's V1 test, so we can assert we never mint one."""
    prefix, sep, suffix = value.partition("-")
    return prefix == "sb" and sep == "-" and len(suffix) == 22 and suffix.isalnum()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


class TokenSigner:
    """Mints and checks HS256 JWTs with a per-emulator key.

    The client only decodes the payload (for ``exp``); the signature lets the router reject
    tokens that another emulator instance (or nobody) issued, with UNAUTHENTICATED, which makes
    the client refresh its access exactly as it would against Modal.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def mint(self, claims: dict[str, Any], ttl: float = 3600.0) -> str:
        now = time.time()
        payload = {"iat": int(now), "exp": int(now + ttl), **claims}
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode("ascii")
        sig = _b64url(hmac.new(self._key, signing_input, hashlib.sha256).digest())
        return f"{header}.{body}.{sig}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims if ``token`` is ours, well-formed and unexpired; else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        expected = _b64url(hmac.new(self._key, signing_input, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            return None
        try:
            claims = json.loads(_b64url_decode(parts[1]))
        except ValueError:
            return None
        if not isinstance(claims, dict):
            return None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp < time.time():
            return None
        return claims
