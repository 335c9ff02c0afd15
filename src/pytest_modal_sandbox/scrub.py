"""Secret scrubbing: every value given as ``secrets=`` (dicts) is replaced by ``***``.

The values reach output in more shapes than the raw string: pytest's assertion messages show
``repr()`` (escaped newlines and quotes), JSON logs escape them, and a multi-line secret (a PEM
key) may be printed one line at a time.  All of these forms are replaced.  pytest-free.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "Scrubber"]

MASK = "***"
MIN_LINE = 6  # lines of a multi-line secret shorter than this are too common to replace alone


def _forms(value: str) -> set[str]:
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1]}
    if "\n" in value:
        forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_LINE)
    return {f for f in forms if f}


class Scrubber:
    """The secret values known to this process, and the one regex that replaces them.

    Thread-safe: threads starting sandboxes ahead add values while the main thread scrubs reports.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def add(self, values: Iterable[Any]) -> None:
        new = {v for v in values if isinstance(v, str) and v} - self._values
        if not new:
            return
        with self._lock:
            self._values |= new
            forms = set().union(*(_forms(v) for v in self._values))
            # longest first, so a secret containing another is replaced whole
            ordered = sorted(forms, key=lambda f: (-len(f), f))
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def text(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def found_in(self, text: str) -> bool:
        pattern = self._pattern
        return pattern is not None and pattern.search(text) is not None

    def deep(self, obj: Any) -> Any:
        """``obj`` with every string inside scrubbed: lists and dataclasses (pytest's
        ``longrepr`` objects) are changed in place, tuples are rebuilt."""
        if self._pattern is None:
            return obj
        return self._deep(obj, 0)

    def _deep(self, obj: Any, depth: int) -> Any:
        if depth > 50:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            obj[:] = [self._deep(x, depth + 1) for x in obj]
            return obj
        if isinstance(obj, tuple):
            items = [self._deep(x, depth + 1) for x in obj]
            if hasattr(obj, "_fields"):  # a namedtuple
                return type(obj)(*items)
            return tuple(items)
        if isinstance(obj, dict):
            for key in list(obj):
                obj[key] = self._deep(obj[key], depth + 1)
            return obj
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name, None)
                new = self._deep(value, depth + 1)
                if new is not value:
                    object.__setattr__(obj, f.name, new)
            return obj
        return obj
