"""The emulator's named objects that need no processes: environments, apps, secrets.

Pure in-memory bookkeeping with Modal's get-or-create semantics, kept apart from the gRPC
layer so it can be unit tested.  Refusals are raised as :class:`RpcError` carrying the gRPC
status name the servicer should answer with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import ids
from .rpc_error import RpcError

DEFAULT_ENVIRONMENT = "main"

# modal_proto.api_pb2.ObjectCreationType values (kept numeric: no proto import needed here).
CREATION_UNSPECIFIED = 0
CREATE_IF_MISSING = 1
CREATE_FAIL_IF_EXISTS = 2
CREATE_OVERWRITE_IF_EXISTS = 3
ANONYMOUS_OWNED_BY_APP = 4
EPHEMERAL = 5


@dataclass
class Environment:
    id: str
    name: str


@dataclass
class App:
    id: str
    name: str
    environment: str
    created_at: float = field(default_factory=time.time)


@dataclass
class Secret:
    id: str
    name: str | None  # None for anonymous (from_dict on the V1 path) secrets
    environment: str
    env: dict[str, str]
    created_at: float = field(default_factory=time.time)


class Registry:
    """Environments, apps and secrets of one emulator instance (thread-safe)."""

    def __init__(
        self,
        *,
        environments: Iterable[str] = (),
        secrets: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._envs: dict[str, Environment] = {}
        self._apps: dict[tuple[str, str], App] = {}
        self._apps_by_id: dict[str, App] = {}
        self._secrets: dict[str, Secret] = {}
        self._named_secrets: dict[tuple[str, str], Secret] = {}
        for name in (DEFAULT_ENVIRONMENT, *environments):
            self._envs.setdefault(name, Environment(ids.object_id("en"), name))
        for name, env in (secrets or {}).items():
            self.secret_get_or_create(name, "", CREATE_OVERWRITE_IF_EXISTS, dict(env))

    # -- environments ------------------------------------------------------------------------
    def environment(self, name: str, creation_type: int = CREATION_UNSPECIFIED) -> Environment:
        """The environment called ``name`` ("" means the default one)."""
        name = name or DEFAULT_ENVIRONMENT
        with self._lock:
            env = self._envs.get(name)
            if env is None:
                if creation_type not in (CREATE_IF_MISSING, CREATE_OVERWRITE_IF_EXISTS):
                    raise RpcError(
                        "NOT_FOUND",
                        f"Environment '{name}' not found (the emulator knows "
                        f"{sorted(self._envs)}; add more with --environment NAME)",
                    )
                env = self._envs[name] = Environment(ids.object_id("en"), name)
            elif creation_type == CREATE_FAIL_IF_EXISTS:
                raise RpcError("ALREADY_EXISTS", f"Environment '{name}' already exists")
            return env

    # -- apps --------------------------------------------------------------------------------
    def app_get_or_create(self, name: str, environment: str, creation_type: int) -> App:
        env = self.environment(environment).name
        with self._lock:
            app = self._apps.get((env, name))
            if app is not None:
                if creation_type == CREATE_FAIL_IF_EXISTS:
                    raise RpcError("ALREADY_EXISTS", f"App '{name}' already exists")
                return app
            if creation_type not in (CREATE_IF_MISSING, CREATE_FAIL_IF_EXISTS):
                raise RpcError("NOT_FOUND", f"App '{name}' not found in environment '{env}'")
            app = App(ids.object_id("ap"), name, env)
            self._apps[(env, name)] = app
            self._apps_by_id[app.id] = app
            return app

    def app_by_id(self, app_id: str) -> App | None:
        with self._lock:
            return self._apps_by_id.get(app_id)

    def app_by_name(self, name: str, environment: str) -> App | None:
        env = environment or DEFAULT_ENVIRONMENT
        with self._lock:
            return self._apps.get((env, name))

    # -- secrets -----------------------------------------------------------------------------
    def secret_get_or_create(
        self,
        name: str,
        environment: str,
        creation_type: int,
        env_dict: Mapping[str, str],
        required_keys: Iterable[str] = (),
    ) -> Secret:
        """Modal's ``SecretGetOrCreate``: named lookups/creations, or anonymous secrets."""
        env_name = self.environment(environment).name
        with self._lock:
            if not name:
                if creation_type not in (ANONYMOUS_OWNED_BY_APP, EPHEMERAL):
                    raise RpcError("INVALID_ARGUMENT", "A Secret needs a name")
                anonymous = Secret(ids.object_id("st"), None, env_name, dict(env_dict))
                self._secrets[anonymous.id] = anonymous
                return anonymous
            key = (env_name, name)
            secret = self._named_secrets.get(key)
            if secret is None:
                if creation_type not in (
                    CREATE_IF_MISSING,
                    CREATE_FAIL_IF_EXISTS,
                    CREATE_OVERWRITE_IF_EXISTS,
                ):
                    raise RpcError(
                        "NOT_FOUND",
                        f"Secret '{name}' not found in environment '{env_name}' (create it with "
                        "modal.Secret.objects.create() or the emulator's --secret option)",
                    )
                secret = Secret(ids.object_id("st"), name, env_name, dict(env_dict))
                self._named_secrets[key] = secret
                self._secrets[secret.id] = secret
            elif creation_type == CREATE_FAIL_IF_EXISTS:
                raise RpcError("ALREADY_EXISTS", f"Secret '{name}' already exists")
            elif creation_type == CREATE_OVERWRITE_IF_EXISTS:
                secret.env = dict(env_dict)
            missing = sorted(set(required_keys) - set(secret.env))
            if missing:
                raise RpcError(
                    "NOT_FOUND", f"Secret '{name}' is missing required key(s): {', '.join(missing)}"
                )
            return secret

    def secret(self, secret_id: str) -> Secret:
        with self._lock:
            secret = self._secrets.get(secret_id)
        if secret is None:
            raise RpcError("NOT_FOUND", f"Secret {secret_id} not found")
        return secret

    def secret_env(self, secret_id: str) -> dict[str, str]:
        """The variables of secret ``secret_id`` (NOT_FOUND if unknown)."""
        return dict(self.secret(secret_id).env)

    def secret_delete(self, secret_id: str) -> None:
        with self._lock:
            secret = self._secrets.pop(secret_id, None)
            if secret is None:
                raise RpcError("NOT_FOUND", f"Secret {secret_id} not found")
            if secret.name is not None:
                self._named_secrets.pop((secret.environment, secret.name), None)
