"""Run ids and the tags every sandbox is created with, so any sweep can find it.

A *run* is one pytest invocation (the controller and all its xdist workers).  Every sandbox
carries the run id as a tag, so a sweep finds it even if nobody recorded it.
"""

from __future__ import annotations

import secrets
import time

__all__ = [
    "CREATE_TAG",
    "KEEP_TAG",
    "MARK_TAG",
    "RUN_TAG",
    "SHARE_TAG",
    "SPEC_TAG",
    "TEST_TAG",
    "WORKER_TAG",
    "new_run_id",
    "run_tags",
]

MARK_TAG = "pytest-modal-sandbox"
RUN_TAG = "pms-run"
WORKER_TAG = "pms-worker"
TEST_TAG = "pms-test"
SPEC_TAG = "pms-spec"
SHARE_TAG = "pms-share"
KEEP_TAG = "pms-keep-until"
CREATE_TAG = "pms-create"  # one create's own token: a retried create finds what it made


def new_run_id() -> str:
    """Sortable and unique: ``20261126-062433-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_tags(run_id: str, worker: str, *, test: str, spec_hash: str, share: str) -> dict[str, str]:
    """The tags every sandbox is created with, so any sweep can find it."""
    return {
        MARK_TAG: "1",
        RUN_TAG: run_id,
        WORKER_TAG: worker,
        TEST_TAG: test[-200:],
        SPEC_TAG: spec_hash,
        SHARE_TAG: share,
    }
