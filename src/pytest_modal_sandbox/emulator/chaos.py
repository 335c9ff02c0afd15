"""Modal's failures, on request: transient RPC faults, create throttling, a concurrency quota.

A CI matrix against the real Modal meets all of these, so the emulator can inject them
(``--fault-rate``, ``--create-rate``, ``--max-sandboxes``, ``--seed``; see the README):

* **Faults** hit that fraction of RPCs on both services, unary and streaming, with a status the
  ``modal`` client treats as transient (``UNAVAILABLE``, ``INTERNAL``) or a reset stream (the
  client's ``StreamTerminatedError``): *before* the work (the request is refused), *after* it
  (the work is done, the answer lost), or, for a stream of answers, *midway* (after some
  messages).  Retried creates and execs never run twice: creates are deduplicated by the
  client's ``x-idempotency-key``, execs by their ``exec_id``.
* **Throttling** is a token bucket of ``create_rate`` sandbox creates per second (burst: one
  second's worth); the excess gets ``RESOURCE_EXHAUSTED`` with an ``RPCRetryPolicy`` detail
  (``retry_after_secs``: when the next token is due), which the client honours by sleeping and
  retrying with the same idempotency key.
* **The quota** refuses a create while ``max_sandboxes`` sandboxes run or are being created:
  ``RESOURCE_EXHAUSTED`` *without* a retry policy (a slot frees only when a sandbox ends, which
  no retry-after can promise), so the client raises ``ResourceExhaustedError`` at once.

Decisions come from one ``random.Random(seed)``: the same seed and the same sequence of RPCs
give the same faults.  :class:`Chaos` is grpclib-free (it raises :class:`RpcError`); the
servicer wrapper applies its decisions to streams.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .rpc_error import RpcError

When = Literal["before", "after", "midway"]
RETRYABLE = ("UNAVAILABLE", "INTERNAL")
RESET = "reset"  # the stream is reset (RST_STREAM): the client sees StreamTerminatedError
THROTTLE_MESSAGE = "Sandbox creation rate limit exceeded"


@dataclass(frozen=True)
class ChaosOptions:
    """What to inject; all off by default."""

    fault_rate: float = 0.0  # fraction of RPCs that fail transiently
    create_rate: float = 0.0  # sandbox creates per second (0: unlimited)
    max_sandboxes: int = 0  # running sandboxes at once (0: unlimited)
    seed: int | None = None  # None: a random seed (reported in the stats)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {self.fault_rate}")
        if self.create_rate < 0:
            raise ValueError(f"create_rate must be >= 0, got {self.create_rate}")
        if self.max_sandboxes < 0:
            raise ValueError(f"max_sandboxes must be >= 0, got {self.max_sandboxes}")

    @property
    def active(self) -> bool:
        return bool(self.fault_rate or self.create_rate or self.max_sandboxes)


@dataclass(frozen=True)
class Fault:
    """One injected failure: when it strikes and how (a status name, or ``RESET``)."""

    when: When
    how: str
    after_messages: int = 0  # midway: the stream fails instead of sending this message (1-based)

    @property
    def message(self) -> str:
        return f"injected fault ({self.when} the work): the Modal emulator's --fault-rate"


class Chaos:
    """Draws faults and admits creates; counts what it injected (thread-safe counters)."""

    def __init__(
        self, options: ChaosOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        seed = options.seed
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(32)
        self._rng = random.Random(self.seed)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = max(1.0, options.create_rate)
        self._refilled = clock()
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    # -- faults ------------------------------------------------------------------------------
    def draw(self, *, streams_answers: bool) -> Fault | None:
        """A fault for this RPC, or None; ``streams_answers``: a server-streaming method."""
        rate = self.options.fault_rate
        if rate <= 0 or self._rng.random() >= rate:
            return None
        whens: tuple[When, ...] = (
            ("before", "after", "midway")
            if streams_answers
            else (
                "before",
                "after",
            )
        )
        when = self._rng.choice(whens)
        how = self._rng.choice((*RETRYABLE, RESET))
        after = self._rng.randint(1, 3) if when == "midway" else 0
        return Fault(when, how, after)

    def injected(self, method: str, fault: Fault) -> None:
        """Count a fault that struck (a midway fault on a stream that ended first did not)."""
        self._count("faults", f"{fault.when}:{fault.how}")
        self._count("faulted_methods", method)

    # -- creates -----------------------------------------------------------------------------
    def admit_create(self, running: int) -> None:
        """Refuse a create over the rate (retry policy attached) or the quota (none)."""
        quota = self.options.max_sandboxes
        if quota and running >= quota:
            self._count("refused", "quota")
            raise RpcError(
                "RESOURCE_EXHAUSTED",
                f"Sandbox limit reached: this workspace runs {running} of at most {quota} "
                "concurrent sandboxes (the Modal emulator's --max-sandboxes); terminate one "
                "and try again",
            )
        rate = self.options.create_rate
        if rate <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(max(1.0, rate), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            wait = (1.0 - self._tokens) / rate
        self._count("refused", "throttled")
        raise RpcError(
            "RESOURCE_EXHAUSTED",
            f"{THROTTLE_MESSAGE} ({rate:g} per second, the Modal emulator's --create-rate)",
            retry_after=wait,
        )

    def deduplicated(self, what: str) -> None:
        """A retried create (same idempotency key) or exec (same exec id) that did not run."""
        self._count("deduplicated", what)

    # -- stats -------------------------------------------------------------------------------
    def _count(self, group: str, key: str) -> None:
        with self._lock:
            self._counts[group][key] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            counts = {g: dict(sorted(c.items())) for g, c in sorted(self._counts.items())}
        return {
            "seed": self.seed,
            "fault_rate": self.options.fault_rate,
            "create_rate": self.options.create_rate,
            "max_sandboxes": self.options.max_sandboxes,
            **counts,
        }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
