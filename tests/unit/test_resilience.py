"""The pure logic of surviving Modal's failures: which errors are transient, retrying within
a deadline, cutting a command short when its sandbox ends, sweeps that say what they could
not end, and how an ending is named.  End to end, under injected faults: tests/faults."""

from __future__ import annotations

import asyncio

import grpclib
import modal.exception as modal_exc
import pytest
from grpclib.exceptions import StreamTerminatedError

from pytest_modal_sandbox import QuotaExceeded, RetriesExhausted, SandboxError
from pytest_modal_sandbox.backends.modal import EndedUnderIt, create_once, transient, unless_ended
from pytest_modal_sandbox.backends.protocol import Ending
from pytest_modal_sandbox.backends.retry import Backoff, retrying
from pytest_modal_sandbox.lifecycle.runs import sweep


@pytest.mark.parametrize(
    "exc",
    [
        modal_exc.ServiceError("unavailable"),
        modal_exc.InternalError("internal"),
        modal_exc.ConnectionError("could not connect"),
        StreamTerminatedError("Connection lost"),  # not a modal error: it slips past the SDK
        grpclib.GRPCError(grpclib.Status.UNAVAILABLE, "down"),
        grpclib.GRPCError(grpclib.Status.INTERNAL, "oops"),
        ConnectionResetError("reset by peer"),
        asyncio.TimeoutError(),
    ],
)
def test_what_is_transient(exc):
    assert transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        modal_exc.NotFoundError("no such sandbox"),
        modal_exc.AlreadyExistsError("name taken"),
        modal_exc.InvalidError("bad argument"),
        modal_exc.ConflictError("already finished"),
        modal_exc.AuthError("bad token"),
        modal_exc.ResourceExhaustedError("quota"),  # a quota: waited for, not retried blindly
        modal_exc.SandboxTerminatedError(),
        modal_exc.SandboxTimeoutError(),
        grpclib.GRPCError(grpclib.Status.NOT_FOUND, "gone"),
        ValueError("a bug"),
    ],
)
def test_what_is_not_transient(exc):
    assert not transient(exc)


class Clock:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_retrying_retries_transient_errors_until_it_works():
    clock = Clock()
    failures = [modal_exc.ServiceError("a"), StreamTerminatedError("b")]

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = retrying(
        call,
        what="polling",
        transient=transient,
        seconds=30,
        backoff=lambda s: Backoff(s, clock=clock.time, sleep=clock.sleep),
    )
    assert result == "done"
    assert len(clock.slept) == 2 and clock.slept[1] > clock.slept[0] / 2  # growing delays


def test_retrying_gives_up_at_its_deadline_naming_the_call_and_the_last_error():
    clock = Clock()

    def call() -> None:
        raise modal_exc.InternalError("still broken")

    with pytest.raises(RetriesExhausted) as info:
        retrying(
            call,
            what="terminating sandbox sb-1",
            transient=transient,
            seconds=10,
            backoff=lambda s: Backoff(s, first=0.5, most=2.0, clock=clock.time, sleep=clock.sleep),
        )
    text = str(info.value)
    assert text.startswith("terminating sandbox sb-1: still failing after ")
    assert "in 10 s" in text and "InternalError: still broken" in text
    assert 9.9 < clock.now <= 10.0 and max(clock.slept) <= 2.0  # bounded: delays and total
    assert isinstance(info.value.__cause__, modal_exc.InternalError)


def test_retrying_lets_other_errors_through_at_once():
    clock = Clock()

    def call() -> None:
        raise modal_exc.NotFoundError("gone")

    with pytest.raises(modal_exc.NotFoundError):
        retrying(
            call,
            what="x",
            transient=transient,
            seconds=10,
            backoff=lambda s: Backoff(s, clock=clock.time, sleep=clock.sleep),
        )
    assert clock.slept == []


class Workspace:
    """Sandboxes as Modal keeps them, and creates that fail as told: ``before`` the work
    (nothing made) or ``after`` it (made, the answer lost)."""

    def __init__(self, *faults: str) -> None:
        self.faults = list(faults)
        self.made: list[str] = []

    def create(self) -> str:
        fault = self.faults.pop(0) if self.faults else ""
        if fault == "quota":
            raise modal_exc.ResourceExhaustedError("Sandbox limit reached: at most 1")
        if fault == "taken":
            raise modal_exc.AlreadyExistsError("Sandbox with name 'x' already exists")
        if fault == "before":
            raise modal_exc.ServiceError("unavailable")
        self.made.append(f"sb-{len(self.made) + 1}")
        if fault == "after":
            raise StreamTerminatedError("Connection lost")
        return self.made[-1]

    def find(self) -> str | None:
        return self.made[-1] if self.made else None

    def run(self, clock: Clock, quota_wait: float = 10) -> str:
        return create_once(
            self.create,
            self.find,
            what="creating a sandbox for python:3.12",
            quota_wait=quota_wait,
            backoff=lambda s, **kw: Backoff(s, clock=clock.time, sleep=clock.sleep, **kw),
        )


def test_a_create_whose_answer_was_lost_is_found_not_made_again():
    workspace = Workspace("after")
    assert workspace.run(Clock()) == "sb-1"
    assert workspace.made == ["sb-1"]


def test_a_create_refused_before_the_work_is_made_again():
    workspace = Workspace("before", "before")
    assert workspace.run(Clock()) == "sb-1"
    assert workspace.made == ["sb-1"]


def test_a_named_create_that_meets_its_own_lost_answer_adopts_it():
    class Slow(Workspace):  # the listing shows the lost create's sandbox only later
        seen = 0

        def find(self) -> str | None:
            self.seen += 1
            return super().find() if self.seen > 1 else None

    workspace = Slow("after", "taken")
    assert workspace.run(Clock()) == "sb-1"
    assert workspace.made == ["sb-1"]


def test_a_name_taken_by_someone_else_is_not_adopted():
    with pytest.raises(modal_exc.AlreadyExistsError):
        Workspace("taken").run(Clock())


def test_a_quota_that_frees_is_waited_for():
    clock = Clock()
    workspace = Workspace("quota", "quota")
    assert workspace.run(clock) == "sb-1"
    assert 0 < clock.now < 10


def test_a_quota_that_never_frees_is_one_clear_error():
    clock = Clock()
    with pytest.raises(QuotaExceeded) as info:
        Workspace(*["quota"] * 100).run(clock, quota_wait=10)
    text = str(info.value)
    assert text.startswith("creating a sandbox for python:3.12: Modal refused it for a quota")
    assert "Sandbox limit reached" in text and "no slot freed in 10 s" in text
    assert "fewer xdist workers (-n)" in text and "--modal-sandbox-quota-wait" in text
    assert 9.9 < clock.now <= 10.0


def test_quick_work_is_not_watched():
    watched = []

    async def work() -> int:
        return 7

    async def ended() -> None:
        watched.append(1)

    assert asyncio.run(unless_ended(work(), ended, grace=1.0)) == 7
    assert watched == []


def test_work_is_cut_short_when_the_sandbox_ends_under_it():
    cancelled = []

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def ended() -> None:
        await asyncio.sleep(0.05)

    async def main() -> None:
        with pytest.raises(EndedUnderIt):
            await unless_ended(work(), ended, grace=0.01)

    asyncio.run(main())
    assert cancelled == [True]


def test_slow_work_outlasting_a_watch_that_fails_still_returns():
    async def work() -> str:
        await asyncio.sleep(0.1)
        return "finished"

    async def ended() -> None:
        raise modal_exc.AuthError("cannot watch")

    assert asyncio.run(unless_ended(work(), ended, grace=0.01)) == "finished"


def test_slow_work_that_finishes_first_cancels_the_watch():
    watch_cancelled = []

    async def work() -> str:
        await asyncio.sleep(0.05)
        return "finished"

    async def ended() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            watch_cancelled.append(True)
            raise

    async def main() -> str:
        result = await unless_ended(work(), ended, grace=0.01)
        await asyncio.sleep(0)  # let the cancellation land
        return result

    assert asyncio.run(main()) == "finished"
    assert watch_cancelled == [True]


def test_a_sweep_ends_what_it_can_and_says_what_it_could_not():
    asked = []

    def terminate(sandbox_id: str) -> None:
        asked.append(sandbox_id)
        if sandbox_id == "sb-2":
            raise RetriesExhausted("terminating sandbox sb-2: still failing after 9 attempts")

    swept = sweep(terminate, ["sb-1", "sb-2", "sb-3", "sb-1"])
    assert sorted(asked) == ["sb-1", "sb-2", "sb-3"]
    assert swept.ended == ["sb-1", "sb-3"]
    assert swept.failed == {
        "sb-2": "RetriesExhausted: terminating sandbox sb-2: still failing after 9 attempts"
    }
    assert swept.failures().startswith("sb-2 (RetriesExhausted: ")


@pytest.mark.parametrize(
    ("ending", "text"),
    [
        (Ending("terminated", 137), "terminated (exit code 137)"),
        (Ending("timeout"), "timed out"),
        (Ending("idle_timeout", 124), "idle timeout (exit code 124)"),
        (Ending("oom", 137), "out of memory (exit code 137)"),
        (Ending("exited", 3), "exited (exit code 3)"),
        (Ending("unknown", detail="Modal no longer knows it"), "ended: Modal no longer knows it"),
    ],
)
def test_how_an_ending_reads(ending, text):
    assert str(ending) == text


def test_an_unknown_ending_is_refused():
    with pytest.raises(ValueError, match="unknown ending 'melted'"):
        Ending("melted")
    assert issubclass(RetriesExhausted, SandboxError)


def test_an_attempt_that_stalls_is_cut_off_and_retried():
    from pytest_modal_sandbox.backends.modal import LoopThread, retried

    attempts: list[int] = []

    async def call() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.sleep(60)  # a connection that never answers
        return "answered"

    loop = LoopThread()
    try:
        assert retried(loop, "polling sandbox sb-1", call, seconds=10, attempt=0.2) == "answered"
    finally:
        loop.close()
    assert len(attempts) == 2
