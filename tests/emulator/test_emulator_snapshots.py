"""Filesystem snapshots through the real ``modal`` client: ``snapshot_filesystem()`` gives an
Image id that ``modal.Image.from_id`` finds and new sandboxes start from; its ttl is kept;
memory snapshots are refused with a clear error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest


def _sh(sb: Any, script: str) -> str:
    proc = sb.exec("sh", "-c", script)
    out = proc.stdout.read()
    assert proc.wait() == 0, proc.stderr.read()
    return str(out)


def test_a_snapshot_is_an_image_that_clones_start_from(make_sandbox: Any, client: Any) -> None:
    import modal

    sb = make_sandbox()
    _sh(sb, "mkdir -p /srv/db && echo seeded > /srv/db/data && echo t > /tmp/t && rm /etc/motd")
    image = sb.snapshot_filesystem()
    assert image.object_id.startswith("im-")
    _sh(sb, "echo later > /srv/db/later")  # after the snapshot: not in it
    found = modal.Image.from_id(image.object_id, client=client)
    first, second = make_sandbox(image=found), make_sandbox(image=image)
    assert _sh(first, "cat /srv/db/data /tmp/t; ls /srv/db; ls /etc/motd || true") == (
        "seeded\nt\ndata\n"
    )
    _sh(first, "echo changed > /srv/db/data")
    assert _sh(second, "cat /srv/db/data") == "seeded\n"  # clones are independent


def test_a_snapshot_is_gone_after_its_ttl(
    make_sandbox: Any, client: Any, emulator_state: Path
) -> None:
    import modal

    sb = make_sandbox()
    image = sb.snapshot_filesystem(ttl=1)
    assert list(emulator_state.rglob(f"snap-{image.object_id}"))
    modal.Image.from_id(image.object_id, client=client)  # found while it lives
    time.sleep(1.2)
    with pytest.raises(modal.exception.NotFoundError, match="expired"):
        make_sandbox(image=image)
    sb.snapshot_filesystem()  # the next snapshot removes the files of expired ones
    assert not list(emulator_state.rglob(f"snap-{image.object_id}"))


def test_the_legacy_snapshot_call_works_too(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT", "1")
    sb = make_sandbox()
    _sh(sb, "echo legacy > /srv-legacy")
    image = sb.snapshot_filesystem()  # the default ttl: the only one the legacy call takes
    assert _sh(make_sandbox(image=image), "cat /srv-legacy") == "legacy\n"


def test_a_memory_snapshot_is_refused_with_the_reason(make_sandbox: Any) -> None:
    import modal

    sb = make_sandbox()
    with pytest.raises(modal.exception.Error, match="CRIU"):
        sb._experimental_snapshot()
