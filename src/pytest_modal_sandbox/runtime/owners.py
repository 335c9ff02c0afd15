"""What only the creating process holds: the keeper's handle, the owner pipe, the stdin pipe.

The owner pipe's write end lives here, in a module-level table, for as long as the sandbox
runs: the keeper reads EOF when this process dies (however it dies) and ends the sandbox.  A
child made with ``os.fork`` closes its copies at once, so the tie stays with the creator.
"""

from __future__ import annotations

import dataclasses
import os
import threading

from .forkserver import KeeperProc

__all__ = ["Owned", "forget", "get", "reap", "register"]


@dataclasses.dataclass
class Owned:
    keeper: KeeperProc
    owner_w: int | None
    stdin_w: int | None
    stdin_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_table: dict[str, Owned] = {}
_lock = threading.Lock()


def register(sandbox_id: str, owned: Owned) -> None:
    with _lock:
        _table[sandbox_id] = owned


def get(sandbox_id: str) -> Owned | None:
    with _lock:
        return _table.get(sandbox_id)


def close_owner(sandbox_id: str) -> None:
    """Drop this process's owner tie (after the keeper was told it is detached)."""
    with _lock:
        owned = _table.get(sandbox_id)
        if owned is not None and owned.owner_w is not None:
            os.close(owned.owner_w)
            owned.owner_w = None


def _close_ends(owned: Owned) -> None:
    """Close this process's owner and stdin pipe ends of one sandbox."""
    for fd in (owned.owner_w, owned.stdin_w):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    owned.owner_w = owned.stdin_w = None


def forget(sandbox_id: str) -> None:
    """The sandbox has ended: close our pipe ends and reap the keeper if it has exited."""
    with _lock:
        owned = _table.pop(sandbox_id, None)
    if owned is None:
        return
    _close_ends(owned)
    if owned.keeper.poll() is None:
        with _lock:
            _exited_later.append(owned.keeper)


_exited_later: list[KeeperProc] = []


def reap() -> None:
    """Collect keepers of ours that have exited (no zombies) and close what their sandboxes
    no longer need (owner and stdin pipe ends), even if nobody polls those sandboxes."""
    with _lock:
        pending = list(_exited_later)
        owned = list(_table.items())
    done = [p for p in pending if p.poll() is not None]
    ended = [sandbox_id for sandbox_id, o in owned if o.keeper.poll() is not None]
    if done:
        with _lock:
            for p in done:
                if p in _exited_later:
                    _exited_later.remove(p)
    for sandbox_id in ended:
        forget(sandbox_id)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for owned in _table.values():
        _close_ends(owned)
    _table.clear()
    _exited_later.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
