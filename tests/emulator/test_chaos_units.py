"""Unit tests of the emulator's injected failures (``chaos.py``): pure logic, a fake clock."""

from __future__ import annotations

import pytest

from pytest_modal_sandbox.emulator.chaos import THROTTLE_MESSAGE, Chaos, ChaosOptions
from pytest_modal_sandbox.emulator.rpc_error import RpcError


def draws(chaos: Chaos, n: int, *, streams: bool = False) -> list[object]:
    return [chaos.draw(streams_answers=streams) for _ in range(n)]


def test_a_seed_reproduces_the_faults() -> None:
    one = draws(Chaos(ChaosOptions(fault_rate=0.3, seed=7)), 200, streams=True)
    two = draws(Chaos(ChaosOptions(fault_rate=0.3, seed=7)), 200, streams=True)
    other = draws(Chaos(ChaosOptions(fault_rate=0.3, seed=8)), 200, streams=True)
    assert one == two != other


def test_the_rate_is_the_fraction_of_rpcs_and_every_kind_occurs() -> None:
    chaos = Chaos(ChaosOptions(fault_rate=0.2, seed=1))
    faults = [f for f in draws(chaos, 5000, streams=True) if f]
    assert 800 < len(faults) < 1200  # 1000 expected
    kinds = {(f.when, f.how) for f in faults}  # type: ignore[attr-defined]
    assert {w for w, _ in kinds} == {"before", "after", "midway"}
    assert {h for _, h in kinds} == {"UNAVAILABLE", "INTERNAL", "reset"}
    unary = [f for f in draws(Chaos(ChaosOptions(fault_rate=1.0, seed=1)), 100) if f]
    assert {f.when for f in unary} == {"before", "after"}  # type: ignore[attr-defined]
    assert draws(Chaos(ChaosOptions(seed=1)), 100) == [None] * 100


def test_create_rate_is_a_token_bucket_with_a_retry_after() -> None:
    now = [100.0]
    chaos = Chaos(ChaosOptions(create_rate=2), clock=lambda: now[0])
    chaos.admit_create(running=0)
    chaos.admit_create(running=0)  # a burst of one second's worth
    with pytest.raises(RpcError) as refused:
        chaos.admit_create(running=0)
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    assert refused.value.message.startswith(THROTTLE_MESSAGE)
    assert refused.value.retry_after == pytest.approx(0.5)
    now[0] += 0.25
    with pytest.raises(RpcError) as again:
        chaos.admit_create(running=0)
    assert again.value.retry_after == pytest.approx(0.25)
    now[0] += 0.25
    chaos.admit_create(running=0)  # refilled
    assert chaos.snapshot()["refused"] == {"throttled": 2}


def test_the_quota_counts_running_sandboxes_and_has_no_retry_policy() -> None:
    chaos = Chaos(ChaosOptions(max_sandboxes=2))
    chaos.admit_create(running=1)
    with pytest.raises(RpcError) as refused:
        chaos.admit_create(running=2)
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    assert refused.value.retry_after is None
    assert "at most 2 concurrent sandboxes" in refused.value.message
    chaos.deduplicated("create")
    snap = chaos.snapshot()
    assert snap["refused"] == {"quota": 1} and snap["deduplicated"] == {"create": 1}
    chaos.reset()
    assert "refused" not in chaos.snapshot()


@pytest.mark.parametrize(
    "bad", [{"fault_rate": 1.5}, {"fault_rate": -0.1}, {"create_rate": -1}, {"max_sandboxes": -1}]
)
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ChaosOptions(**bad)  # type: ignore[arg-type]
