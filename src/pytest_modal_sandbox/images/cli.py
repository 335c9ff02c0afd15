"""``python -m pytest_modal_sandbox images {list,pull,prune}``: look after the image cache."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

from .errors import ImageError
from .store import ImageStore

__all__ = ["main"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 90s, 30m, 12h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _age(ts: float) -> str:
    seconds = max(0.0, time.time() - ts)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_modal_sandbox images",
        description="Pull, list and prune the OCI images the local backend runs sandboxes in.",
    )
    parser.add_argument("--cache-dir", help="cache directory (default: the plugin's cache root)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list unpacked images, most recently used first")
    pull = sub.add_parser("pull", help="pull and unpack images now (re-resolving tags)")
    pull.add_argument("references", nargs="+", metavar="REFERENCE")
    pull.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    prune = sub.add_parser(
        "prune", help="remove images and local snapshots not in use (and their blobs)"
    )
    prune.add_argument(
        "--unused-for",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="only images not used for this long (e.g. 7d); default: all unused",
    )
    prune.add_argument("--dry-run", action="store_true", help="only show what would go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``images`` command; returns the exit status (0 ok, 1 failed, 2 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        store = ImageStore(
            args.cache_dir,
            platform=getattr(args, "platform", None),
            progress=lambda message: print(message, file=sys.stderr, flush=True),
        )
        if args.command == "list":
            images = store.list()
            if not images:
                print("no images cached in", store.root)
                return 0
            print(f"{'IMAGE ID':<19}  {'SIZE':>10}  {'LAST USED':<10}  REFERENCES")
            for image in images:
                refs = ", ".join(image.references) or "-"
                used = "in use" if image.in_use else _age(image.last_used)
                print(f"{image.config_digest[:19]}  {_size(image.size):>10}  {used:<10}  {refs}")
            return 0
        if args.command == "pull":
            status = 0
            for reference in args.references:
                try:
                    root = store.pull(reference)
                except ImageError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    status = 1
                    continue
                print(f"{root.reference}  {root.digest}  {root.path}")
            return status
        removed = store.prune(unused_for=args.unused_for, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for image in removed:
            refs = ", ".join(image.references) or "-"
            print(f"{verb} {image.config_digest[:19]}  {_size(image.size)}  {refs}")
        print(f"{verb} {len(removed)} image(s)")
        snapshots = _prune_snapshots(args.unused_for, args.dry_run)
        for snapshot_id in snapshots:
            print(f"{verb} {snapshot_id}")
        print(f"{verb} {len(snapshots)} snapshot(s)")
        return 0
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: image cache: {exc}", file=sys.stderr)
        return 1


def _prune_snapshots(older_than: float, dry_run: bool) -> list[str]:
    """The local backend's snapshots (``Sandbox.snapshot(keep=True)`` ones, and those of runs
    that died), but not those a running sandbox was started from, nor a live run's."""
    from .._paths import state_root
    from ..lifecycle.runs import RunLock, runs_dir
    from ..runtime import LocalRuntime
    from ..runtime.snapshot import remove, store_dir

    root = state_root() / "local"
    store = store_dir(root)
    if not store.is_dir():
        return []
    in_use = [d for sb in LocalRuntime(root).list() for _, d in sb.layers]
    runs = runs_dir()
    return remove(
        store,
        in_use=in_use,
        older_than=older_than,
        dry_run=dry_run,
        live=lambda run_id: RunLock.is_held(runs / f"{run_id}.lock"),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
