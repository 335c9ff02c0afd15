"""Names and tags on Modal: a ``share="run"`` sandbox is claimed by its deterministic name —
the xdist worker that did not create it finds it by that name — and every sandbox carries the
run's tags, by which ``modal.Sandbox.list(tags=...)`` finds it while it runs."""

from __future__ import annotations

import pytest

import faultlib

pytestmark = pytest.mark.live

# Asked of Modal itself, with the modal client, from inside the run while the sandboxes run.
NAMES_TESTS = r"""
import os

import modal

from pytest_modal_sandbox import sandbox_fixture
from conftest import note

shared = sandbox_fixture(scope="session", share="run")


def listed(config, **tags):
    app = modal.App.lookup(
        config.getini("modal_sandbox_app"),
        environment_name=config.getini("modal_sandbox_environment") or None,
    )
    return sorted(sb.object_id for sb in modal.Sandbox.list(app_id=app.app_id, tags=tags))


def test_the_run_has_one_shared_sandbox(shared, pytestconfig):
    tags = modal.Sandbox.from_id(shared.id).get_tags()
    note("shared", id=shared.id, tags=tags)
    assert tags["pytest-modal-sandbox"] == "1" and tags["pms-share"] == "run"
    assert listed(pytestconfig, **{"pms-run": tags["pms-run"], "pms-share": "run"}) == [shared.id]


def test_a_test_sandbox_is_tagged_with_its_test(sandbox, request):
    tags = modal.Sandbox.from_id(sandbox.id).get_tags()
    note("own", id=sandbox.id, tags=tags)
    assert tags["pms-test"] == request.node.nodeid
    assert tags["pms-worker"] == os.environ["PYTEST_XDIST_WORKER"]
    assert tags["pms-share"] == "function"
    mine = {key: tags[key] for key in ("pms-run", "pms-test", "pms-worker")}
    assert listed(request.config, **mine) == [sandbox.id]
"""


def test_shared_sandbox_is_found_by_name_and_tags_list_sandboxes(live):
    # --dist each: both workers run both tests, so both claim the run's shared sandbox
    run, _ = faultlib.run_file(
        live, "names", NAMES_TESTS, "-n", "2", "--dist", "each", timeout=600, passed=4
    )
    shared = run.notes("shared")
    assert sorted(n["worker"] for n in shared) == ["gw0", "gw1"]
    assert len({n["id"] for n in shared}) == 1, shared  # one sandbox for the whole run
    assert len({n["tags"]["pms-run"] for n in shared}) == 1
    created = [n["id"] for n in run.notes("created")]
    # created once, by one worker: the other found it by its name (Modal's from_name)
    assert created.count(shared[0]["id"]) == 1, created
    own = run.notes("own")
    assert len({n["id"] for n in own}) == 2 and all(n["id"] in created for n in own)
