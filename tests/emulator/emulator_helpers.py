"""Helpers shared by the emulator's tests (a uniquely named module: tests are not packages)."""

from __future__ import annotations

from typing import Any

from proctable import processes_mentioning


def reset_modal_globals() -> None:
    """Process-wide caches that must not outlive one emulator (wire spec §1.5)."""
    import modal
    import modal._environments

    # 1.6.4 calls it _set_env_client; 1.6.0 (the lowest supported) set_env_client
    reset = getattr(modal.Client, "_set_env_client", None) or modal.Client.set_env_client
    reset(None)
    modal._environments.ENVIRONMENT_CACHE.clear()


def open_client(url: str, token_id: str = "ak-test", token_secret: str = "as-test") -> Any:
    import modal
    from modal_proto import api_pb2

    reset_modal_globals()
    client = modal.Client(url, api_pb2.CLIENT_TYPE_CLIENT, (token_id, token_secret))
    client.__enter__()
    return client


def no_process_mentions(text: str) -> bool:
    """Whether no live process mentions ``text`` (checked once: the emulator waits for every
    keeper to finish cleaning up before it exits)."""
    return not processes_mentioning(text)
