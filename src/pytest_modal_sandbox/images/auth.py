"""Registry credentials and ``WWW-Authenticate`` challenges.

Credentials are looked up per registry, first match wins:

1. ``$PYTEST_MODAL_SANDBOX_REGISTRY_AUTH``: a JSON object mapping a registry (``"ghcr.io"``,
   ``"localhost:5000"``, ``"docker.io"``) to ``"user:password"``, to
   ``{"username": ..., "password": ...}`` or to ``{"auth": base64("user:password")}``.
   Meant for CI secrets; the values are never printed.
2. Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers`` and ``credsStore`` (runs ``docker-credential-<helper> get``), then ``auths``
   entries with a base64 ``auth`` or ``username``/``password``.  Keys may be URLs
   (``https://index.docker.io/v1/``) or bare hosts.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import RegistryAuthError
from .reference import _HUB_ALIASES, DOCKER_HUB

__all__ = ["AUTH_ENV", "Challenge", "Credentials", "find_credentials", "parse_challenge"]

AUTH_ENV = "PYTEST_MODAL_SANDBOX_REGISTRY_AUTH"


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclasses.dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic" (lower case)
    params: Mapping[str, str]


_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> Challenge:
    """Parse one ``WWW-Authenticate`` value (``Bearer realm="...",service="..."``)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else (m.group(3) or "")
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme=scheme.lower(), params=params)


def _normalise_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000/v2/`` -> ``h:5000``."""
    host = re.sub(r"^[a-z]+://", "", key.strip(), flags=re.I).split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _from_value(value: Any, where: str) -> Credentials:
    if isinstance(value, str):
        user, sep, password = value.partition(":")
        if sep and user:
            return Credentials(user, password)
        raise RegistryAuthError(f"{where}: expected 'user:password'")
    if isinstance(value, Mapping):
        if isinstance(value.get("auth"), str) and value["auth"]:
            try:
                decoded = base64.b64decode(value["auth"], validate=True).decode()
            except ValueError as exc:
                raise RegistryAuthError(f"{where}: 'auth' is not base64 of user:password") from exc
            return _from_value(decoded, where)
        name, secret = value.get("username"), value.get("password")
        if isinstance(name, str) and name and isinstance(secret, str):
            return Credentials(name, secret)
        raise RegistryAuthError(f"{where}: expected 'auth' or 'username' and 'password'")
    raise RegistryAuthError(f"{where}: expected a string or an object")


def _from_env(registry: str) -> Credentials | None:
    raw = os.environ.get(AUTH_ENV)
    if not raw:
        return None
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise RegistryAuthError(
            f'${AUTH_ENV} is not valid JSON (expected {{"registry": "user:password"}})'
        ) from exc
    if not isinstance(table, dict):
        raise RegistryAuthError(f"${AUTH_ENV} must be a JSON object keyed by registry")
    for key, value in table.items():
        if _normalise_key(str(key)) == registry:
            return _from_value(value, f"${AUTH_ENV}[{key!r}]")
    return None


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _helper(helper: str, registry: str, where: str) -> Credentials | None:
    server = "https://index.docker.io/v1/" if registry == DOCKER_HUB else registry
    try:
        proc = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=server.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryAuthError(
            f"{where}: credential helper docker-credential-{helper} failed: {exc}"
        ) from exc
    if proc.returncode != 0:  # "credentials not found in native keychain"
        return None
    try:
        data = json.loads(proc.stdout)
        return Credentials(str(data["Username"]), str(data["Secret"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryAuthError(
            f"{where}: docker-credential-{helper} printed no Username/Secret"
        ) from exc


def _from_docker_config(registry: str) -> Credentials | None:
    path = docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryAuthError(f"cannot read Docker credentials from {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise RegistryAuthError(f"{path}: expected a JSON object")
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normalise_key(str(key)) == registry and isinstance(helper, str):
                return _helper(helper, registry, f"{path} credHelpers[{key!r}]")
    auths = config.get("auths") or {}
    if isinstance(auths, dict):
        for key, value in auths.items():
            if _normalise_key(str(key)) != registry:
                continue
            if isinstance(value, dict) and not value.get("auth") and not value.get("username"):
                continue  # an empty entry: docker login used the credsStore
            return _from_value(value, f"{path} auths[{key!r}]")
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _helper(store, registry, f"{path} credsStore")
    return None


def find_credentials(registry: str) -> Credentials | None:
    """Credentials for ``registry`` (as written in references, e.g. ``docker.io``), if any."""
    key = _normalise_key(registry)
    return _from_env(key) or _from_docker_config(key)
