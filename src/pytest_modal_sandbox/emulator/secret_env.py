"""The environment a sandbox or exec gets from its secrets and ``env=``, in Modal's order.

The 1.6 client sends ``secret_sources``: one entry per ``secrets=`` item, in order (inline
``env`` maps for ``Secret.from_dict``, ``secret_id`` for ``Secret.from_name``), then the
``env=`` dict last.  Later entries win.  Older clients (1.5) sent ``secret_ids`` plus an inline
map (``ephemeral_secrets`` / exec ``env``) instead; those are honoured when no sources are sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol


class _StringMap(Protocol):
    @property
    def contents(self) -> Mapping[str, str]: ...


class _SecretSource(Protocol):
    """Structural view of ``api_pb2.SecretSource`` (a oneof of ``secret_id`` and ``env``)."""

    @property
    def secret_id(self) -> str: ...

    @property
    def env(self) -> _StringMap: ...

    def WhichOneof(self, name: str) -> str | None: ...


class _SecretLookup(Protocol):
    def secret_env(self, secret_id: str) -> Mapping[str, str]: ...


def merge_env(
    sources: Sequence[_SecretSource],
    *,
    secret_ids: Iterable[str] = (),
    legacy_env: Mapping[str, str] | None = None,
    secrets: _SecretLookup,
) -> dict[str, str]:
    """Apply every source in order (later keys win); unknown secret ids raise ``RpcError``."""
    env: dict[str, str] = {}
    if sources:
        referenced = {s.secret_id for s in sources if s.WhichOneof("source") == "secret_id"}
        for secret_id in secret_ids:  # only ids not already among the sources (1.6 sends both)
            if secret_id not in referenced:
                env.update(secrets.secret_env(secret_id))
        for source in sources:
            kind = source.WhichOneof("source")
            if kind == "env":
                env.update(source.env.contents)
            elif kind == "secret_id":
                env.update(secrets.secret_env(source.secret_id))
        return env
    for secret_id in secret_ids:
        env.update(secrets.secret_env(secret_id))
    env.update(legacy_env or {})
    return env
