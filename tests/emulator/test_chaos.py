"""Modal's failures on request, met by the real ``modal`` client.

Faults (``--fault-rate``), create throttling (``--create-rate``), a concurrency quota
(``--max-sandboxes``), and sandboxes ended from outside (``EmulatorProcess.end_sandbox``).
What the client retries by itself must come out right, and exactly once: a create or an exec
whose answer was lost is not run again when the client retries it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from emulator_helpers import Emu, own_emulator, persist

modal = pytest.importorskip("modal")
from modal.exception import (  # noqa: E402
    ResourceExhaustedError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)

pytestmark = [pytest.mark.usefixtures("runtime_available"), pytest.mark.faults]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """A fifth of all RPCs fail (seeded)."""
    yield from own_emulator(tmp_path_factory, fault_rate=0.2, seed=1234)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """At most 2 creates per second and 4 sandboxes at once."""
    yield from own_emulator(tmp_path_factory, create_rate=2, max_sandboxes=4)


def test_lost_answers_never_run_a_create_or_an_exec_twice(faulty: Emu) -> None:
    faulty.proc.reset_stats()
    before = faulty.proc.stats()["sandboxes"]["created"]
    made = []
    for i in range(5):
        sb = persist(lambda: faulty.create(tags={"case": "once"}))
        made.append(sb)
        for _ in range(3):  # each exec appends one line, however often its start is retried
            persist(lambda sb=sb: sb.exec("sh", "-c", "echo x >> /tmp/count").wait())
        count = persist(lambda sb=sb: sb.exec("wc", "-l", "/tmp/count").stdout.read())
        assert count.split()[0] == "3", f"sandbox {i}: {count!r}"
    stats = faulty.proc.stats()
    assert stats["sandboxes"]["created"] == before + len(made)  # no create ran twice
    chaos = stats["chaos"]
    assert sum(chaos["faults"].values()) > 10
    assert {"before", "after"} <= {k.split(":")[0] for k in chaos["faults"]}
    assert chaos["seed"] == 1234
    for sb in made:
        persist(sb.terminate)


def test_output_streams_survive_failures_midway(faulty: Emu) -> None:
    sb = persist(faulty.create)
    for _ in range(5):
        p = persist(lambda: sb.exec("sh", "-c", "seq 1 200000", text=False))
        data = persist(p.stdout.read)  # the client resumes a dropped stream at its offset
        assert data == b"".join(b"%d\n" % i for i in range(1, 200001))
        assert persist(p.wait) == 0
    persist(sb.terminate)


def test_throttled_creates_wait_as_the_server_says(limited: Emu) -> None:
    limited.proc.reset_stats()
    before = limited.proc.stats()["sandboxes"]["created"]
    with ThreadPoolExecutor(4) as pool:  # 4 at once against a burst of 2
        made = list(pool.map(lambda _: limited.create(), range(4)))
    for sb in made:
        sb.terminate()
    chaos = limited.proc.stats()["chaos"]
    assert chaos["refused"]["throttled"] >= 2  # retried by the client after retry_after_secs
    assert limited.proc.stats()["sandboxes"]["created"] == before + 4


def test_the_concurrency_quota_is_resource_exhausted(limited: Emu) -> None:
    running = [limited.create() for _ in range(4)]
    with pytest.raises(ResourceExhaustedError, match="at most 4 concurrent sandboxes"):
        limited.create()
    running[0].terminate()
    again = limited.create()  # a slot is free again
    assert again.exec("true").wait() == 0
    running[1].terminate()
    time.sleep(1.1)  # the create rate's burst (2) refills: two creates sent at once go through
    with ThreadPoolExecutor(2) as pool:  # for the one free slot: creates under way count
        tries = [pool.submit(limited.create) for _ in range(2)]
    made = [t.result() for t in tries if t.exception() is None]
    refused = [t.exception() for t in tries if t.exception() is not None]
    assert len(made) == 1 and isinstance(refused[0], ResourceExhaustedError), refused
    for sb in [*running[2:], again, *made]:
        sb.terminate()


@pytest.mark.parametrize(
    ("how", "raises", "returncode"),
    [
        ("terminated", SandboxTerminatedError, 137),
        ("timeout", SandboxTimeoutError, 124),
        ("idle_timeout", SandboxTimeoutError, 124),  # as --idle-timeout-status (default) says
        ("oom", None, 137),
    ],
)
def test_sandboxes_ended_from_outside(
    make_sandbox: Any, emulator: Any, client: Any, how: str, raises: Any, returncode: int
) -> None:
    sb = make_sandbox()
    running = sb.exec("sleep", "300")
    emulator.end_sandbox(sb.object_id, how)
    if raises is None:
        assert sb.wait() is None  # Modal's OOM status raises nothing: only the code tells
    else:
        with pytest.raises(raises):
            sb.wait()
    assert sb.returncode == returncode
    assert running.wait() == 137  # its processes died with it
    assert modal.Sandbox.from_id(sb.object_id, client=client).poll() == returncode


def test_ending_from_outside_needs_a_known_way(make_sandbox: Any, emulator: Any) -> None:
    from grpclib.exceptions import GRPCError

    sb = make_sandbox()
    with pytest.raises(GRPCError, match="choose one of terminated, timeout, oom, idle_timeout"):
        emulator.end_sandbox(sb.object_id, "meteor")
    assert sb.poll() is None
