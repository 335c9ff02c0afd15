"""Shared by every test directory: ``tests/`` on ``sys.path`` for the helper modules that live
here (``proctable``, ``registry``), and the real-registry fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry import registry, registry_factory  # noqa: F401  (fixtures for every directory)
