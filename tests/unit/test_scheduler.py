"""The scheduler's rules without sandboxes: which fixture instances it starts ahead, how many,
which test gets which, and what it ends.  The tests are real (collected by pytester); the start
is a fake that records what it was asked, so the assertions are about decisions, not timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_modal_sandbox.fixtures import SKIP_REASON, FixtureInstance
from pytest_modal_sandbox.matrix import ImageOverride
from pytest_modal_sandbox.scheduler import Scheduler

SUITE = """
import pytest
from pytest_modal_sandbox import sandbox_fixture

db = sandbox_fixture(scope="module", env={"DB": "1"})
box = sandbox_fixture(scope="session")


@pytest.mark.sandbox(env={"N": "1"})
def test_1(sandbox):
    pass


@pytest.mark.sandbox(env={"N": "2"})
def test_2(sandbox, db):
    pass


@pytest.mark.skip
def test_3_skipped(sandbox):
    pass


@pytest.mark.parametrize("sandbox", [{"env": {"N": "4a"}}, {"env": {"N": "4b"}}], indirect=True)
def test_4(sandbox):
    pass


def test_5(box):
    pass


def test_6_plain():
    pass
"""


class FakeStart:
    """Records each start (the instance's label, whether it was ahead) and each end of one
    nobody took (a discard, or a start cancelled as its sandbox was created)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, bool]] = []
        self.discarded: list[str] = []
        self.lock = threading.Lock()

    def __call__(
        self,
        instance: FixtureInstance,
        *,
        ahead: bool,
        on_created: Callable[[Any], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Any:
        sandbox = f"sb-for-{instance.label}"
        if on_created is not None:
            try:
                on_created(sandbox)
            except Exception:  # cancelled while it started: the launch ends it
                with self.lock:
                    self.discarded.append(instance.label)
                raise
        with self.lock:
            self.started.append((instance.label, ahead))
        return sandbox

    def discard(self, sandbox: Any, instance: FixtureInstance) -> None:
        with self.lock:
            self.discarded.append(instance.label)

    def labels(self, count: int) -> list[str]:
        """The labels started, once there are ``count`` of them (starts ahead run in threads)."""
        deadline = time.monotonic() + 10
        while len(self.started) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and no more than that
        return sorted(label for label, _ in self.started)


@pytest.fixture
def items(pytester: pytest.Pytester) -> list[pytest.Item]:
    pytester.makepyfile(test_suite=SUITE)
    found = list(pytester.getitems(pytester.path / "test_suite.py"))
    for item in found:  # collected without --modal-sandbox: drop the plugin's "skipped" mark
        item.own_markers = [m for m in item.own_markers if m.kwargs.get("reason") != SKIP_REASON]
    return found


def scheduler(items: list[pytest.Item], ahead: int) -> tuple[Scheduler, FakeStart]:
    start = FakeStart()

    def upcoming(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.Item]:
        return items[items.index(item) + 1 :]

    s = Scheduler(
        start, start.discard, ahead=ahead, wide=ahead > 0, images=ImageOverride(), upcoming=upcoming
    )
    return s, start


def by_name(items: list[pytest.Item]) -> dict[str, pytest.Item]:
    return {item.name: item for item in items}


def fn(test: str) -> str:
    return f"sandbox (test_suite.py::{test})"


def test_starts_what_is_coming_up_to_the_bound(items: list[pytest.Item]) -> None:
    s, start = scheduler(items, ahead=2)
    t = by_name(items)
    s.collection_finished(items)
    assert start.labels(1) == ["box (session)"]
    s.test_starting(t["test_1"], t["test_2"])
    # the module-scoped db of the next test; the function-scoped sandboxes of two tests
    assert start.labels(4) == sorted(
        ["box (session)", "db (module test_suite.py)", fn("test_1"), fn("test_2")]
    )
    assert all(ahead for _, ahead in start.started)
    # test_1 takes its own: a place in the bound is free; the skipped test is passed over
    (mine,) = (i for i in s.instances(t["test_1"]) if i.fixture == "sandbox")
    assert s.obtain(mine) == f"sb-for-{fn('test_1')}"
    assert fn("test_4[env=N=4a]") in start.labels(5)
    assert not any("test_3" in label for label, _ in start.started)
    s.shutdown()


def test_each_test_gets_exactly_the_sandbox_made_for_it(items: list[pytest.Item]) -> None:
    s, start = scheduler(items, ahead=3)
    t = by_name(items)
    s.test_starting(t["test_1"], t["test_2"])
    start.labels(4)
    for name in ("test_1", "test_2"):
        (mine,) = (i for i in s.instances(t[name]) if i.fixture == "sandbox")
        assert s.obtain(mine) == f"sb-for-{fn(name)}"
    specs = {i.spec.env["N"] for item in items for i in s.instances(item) if "N" in i.spec.env}
    assert specs == {"1", "2", "4a", "4b"}  # marker fields and indirect parameters, per test
    s.shutdown()


def test_what_its_test_did_not_take_ends_when_the_test_is_over(items: list[pytest.Item]) -> None:
    s, start = scheduler(items, ahead=2)
    t = by_name(items)
    s.test_starting(t["test_1"], t["test_2"])
    start.labels(3)
    s.test_finished(t["test_1"], t["test_2"])  # skipped, say: it never asked for its sandbox
    assert start.discarded == [fn("test_1")]
    assert fn("test_4[env=N=4a]") in start.labels(4)  # its place in the bound went on
    s.shutdown()  # -x, Ctrl-C, the end: everything nobody took (it waits for running starts)
    assert sorted(start.discarded) == sorted(
        [fn("test_1"), fn("test_2"), fn("test_4[env=N=4a]"), "db (module test_suite.py)"]
    )


def test_a_spec_the_hook_changed_is_started_at_setup(items: list[pytest.Item]) -> None:
    s, start = scheduler(items, ahead=2)
    t = by_name(items)
    s.test_starting(t["test_1"], t["test_2"])
    start.labels(3)
    (mine,) = (i for i in s.instances(t["test_1"]) if i.fixture == "sandbox")
    s.spec_changed(mine)  # the hook gave test_1 another spec: what was started ahead is waste
    assert sorted(start.discarded) == [fn("test_1"), fn("test_2")]
    hooked = mine.with_spec(mine.spec.replace(env={"N": "hooked"}))
    assert s.obtain(hooked) == f"sb-for-{fn('test_1')}"
    assert start.started[-1] == (fn("test_1"), False)  # started there and then, not ahead
    s.test_finished(t["test_1"], t["test_2"])
    s.test_starting(t["test_2"], t["test_3_skipped"])
    time.sleep(0.1)
    assert [label for label, ahead in start.started if ahead and "sandbox" in label] == [
        fn("test_1"),
        fn("test_2"),
    ]  # that fixture is not started ahead any more
    s.shutdown()


def test_ahead_zero_starts_nothing_ahead(items: list[pytest.Item]) -> None:
    s, start = scheduler(items, ahead=0)
    t = by_name(items)
    s.collection_finished(items)
    s.test_starting(t["test_1"], t["test_2"])
    time.sleep(0.1)
    assert start.started == []
    (mine,) = (i for i in s.instances(t["test_1"]) if i.fixture == "sandbox")
    s.obtain(mine)
    assert start.started == [(fn("test_1"), False)]
    s.shutdown()


def test_a_quota_refusing_a_start_made_ahead_frees_the_slots_for_the_current_test(
    items: list[pytest.Item],
) -> None:
    """The workspace's quota is full: a start made ahead is refused at once; nothing more is
    started ahead, what was started ahead for later tests ends (its slot is the current
    test's), and a setup whose start was refused starts its sandbox itself (waiting for a
    slot as any start does)."""
    from pytest_modal_sandbox import QuotaExceeded

    t = by_name(items)
    refused = fn("test_2")

    class QuotaStart(FakeStart):
        def __call__(self, instance: FixtureInstance, *, ahead: bool, **kw: Any) -> Any:
            if ahead and instance.label == refused:
                time.sleep(0.1)  # the others were started meanwhile
                raise QuotaExceeded("Sandbox limit reached")
            return super().__call__(instance, ahead=ahead, **kw)

    start = QuotaStart()
    s = Scheduler(
        start,
        start.discard,
        ahead=3,
        images=ImageOverride(),
        upcoming=lambda item, nextitem: items[items.index(item) + 1 :],
    )
    s.test_starting(t["test_1"], t["test_2"])
    deadline = time.monotonic() + 10
    while "db (module test_suite.py)" not in start.discarded and time.monotonic() < deadline:
        time.sleep(0.01)
    # ended: what was started ahead for later tests; kept: the current test's own
    assert sorted(start.discarded) == sorted([fn("test_4[env=N=4a]"), "db (module test_suite.py)"])
    (mine,) = (i for i in s.instances(t["test_1"]) if i.fixture == "sandbox")
    assert s.obtain(mine) == f"sb-for-{fn('test_1')}"
    s.test_finished(t["test_1"], t["test_2"])
    s.test_starting(t["test_2"], t["test_3_skipped"])
    (theirs,) = (i for i in s.instances(t["test_2"]) if i.fixture == "sandbox")
    assert s.obtain(theirs) == f"sb-for-{refused}"
    assert start.started[-1] == (refused, False)  # started at its setup, not ahead
    assert sum(1 for _, ahead in start.started if ahead) == 3  # and nothing more ahead since
    s.shutdown()
