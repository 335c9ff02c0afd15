"""pytest-xdist: the controller's side and the worker's.

The controller hands each worker, in ``workerinput``, the run id, the backend and its options,
and one execnet channel back to itself: the worker sends its sandbox events (:class:`Event`)
through it as they happen, so the controller's ledger, progress view and summary see them at
once — with workers on other machines too.  When a worker goes down, the controller ends that
worker's sandboxes.  A worker starts ahead from its own queue of pending tests
(:func:`pending_items`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import Event

if TYPE_CHECKING:
    import pytest

    from .run import Run

__all__ = ["XdistController", "event_sender", "pending_items", "worker_input"]

RUN_ID = "modal_sandbox_run_id"
BACKEND = "modal_sandbox_backend"
OPTIONS = "modal_sandbox_backend_options"
EVENTS = "modal_sandbox_events"


def worker_input(config: pytest.Config) -> dict[str, Any]:
    """What the controller gave this worker (empty outside a worker)."""
    return dict(getattr(config, "workerinput", {}))


class XdistController:
    """Controller-side hooks, registered only when xdist is present and distributing."""

    def __init__(
        self,
        run: Run,
        receive: Callable[[Event], None],
        worker_down: Callable[[str, object], None],
    ) -> None:
        self.run = run
        self.receive = receive
        self.worker_down = worker_down

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_ID] = self.run.run_id
        node.workerinput[BACKEND] = self.run.backend_name
        node.workerinput[OPTIONS] = dict(self.run.backend_options)
        channel = node.gateway.newchannel()
        channel.setcallback(self._received)  # runs in execnet's receiving thread
        node.workerinput[EVENTS] = channel

    def _received(self, data: Any) -> None:
        with contextlib.suppress(Exception):  # a malformed event must not stop the others
            self.receive(Event.from_dict(data))

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error is not None:
            self.worker_down(str(node.gateway.id), error)


def event_sender(config: pytest.Config) -> Callable[[Event], None] | None:
    """A worker's way to send its events to the controller (None outside a worker)."""
    channel = worker_input(config).get(EVENTS)
    if channel is None:
        return None

    def send(event: Event) -> None:
        with contextlib.suppress(Exception):  # the controller may be gone: the sweeps remain
            channel.send(event.as_dict())

    return send


def pending_items(config: pytest.Config, items: list[pytest.Item]) -> list[pytest.Item] | None:
    """The tests xdist has sent this worker and it has not begun, in order; None where that
    cannot be read.  xdist keeps them in its worker plugin's ``torun`` queue (indices into the
    collected items, readable under the queue's lock); there is no public accessor."""
    for plugin in config.pluginmanager.get_plugins():
        queue = getattr(plugin, "torun", None)
        if queue is None or not hasattr(queue, "lock"):
            continue
        try:
            with queue.lock() as pending:
                indices = [i for i in pending if isinstance(i, int)]
        except Exception:
            return None
        return [items[i] for i in indices if 0 <= i < len(items)]
    return None
