"""Controller-side xdist hooks, registered only when xdist is present and distributing.

The run id and backend travel to workers in ``workerinput``; a crashed worker's own sandboxes
are terminated as soon as the controller learns it went down.
"""

from __future__ import annotations

from typing import Any

from .manager import SandboxManager


class XdistController:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["modal_sandbox_run_id"] = self.manager.run_id
        node.workerinput["modal_sandbox_backend"] = self.manager.backend_name
        node.workerinput["modal_sandbox_backend_options"] = dict(self.manager.backend_options)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error is not None:
            worker = node.gateway.id
            self.manager.worker_down(worker)
            from .plugin import say

            say(node.config, [f"worker {worker} went down ({error}); ending its sandboxes"])
