"""Sandbox ids shaped like Modal's V2 ids: ``sb-`` + a 26-character Crockford ULID.

The real ``modal`` client picks its protocol from the id's shape, so the emulator must hand
out V2-shaped ids; ULIDs also sort by creation time, which keeps listings cheap to order.
"""

from __future__ import annotations

import os
import re
import time

__all__ = ["ID_PATTERN", "is_sandbox_id", "new_sandbox_id", "ulid"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = re.compile(r"^sb-[0-9A-HJKMNP-TV-Z]{26}$")


def ulid(now: float | None = None) -> str:
    """A 26-character Crockford base32 ULID: 48-bit milliseconds, then 80 random bits."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_sandbox_id(now: float | None = None) -> str:
    """A new sandbox id: ``sb-`` + a ULID."""
    return "sb-" + ulid(now)


def is_sandbox_id(text: str) -> bool:
    """Whether ``text`` has the shape of an id minted here (guards paths built from ids)."""
    return bool(ID_PATTERN.match(text))
