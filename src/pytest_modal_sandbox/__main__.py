"""``python -m pytest_modal_sandbox {list,reap,emulator,images}``: see and clean up sandboxes.

``reap --stale`` ends the sandboxes of runs recorded on this machine whose controller is gone;
``reap --run ID`` one finished run's; ``reap --all`` every sandbox the plugin ever tagged (in the
app, for Modal), including live runs' — the only way to touch those, and it asks first on a tty.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .backends import BACKENDS, make_backend
from .backends.protocol import SandboxInfo
from .errors import SandboxError
from .lifecycle.runs import RunLock, Swept, forget_run, runs_dir, stale_runs, sweep
from .lifecycle.tags import MARK_TAG, RUN_TAG, TEST_TAG, WORKER_TAG

__all__ = ["main", "reap", "reap_from_pytest", "run_reap"]


def _backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=[b for b in BACKENDS if b != "emulator"],
        help="where to look (default: auto = modal with credentials, else local)",
    )
    parser.add_argument(
        "--app", default="pytest-modal-sandbox", help="Modal app (default: %(default)s)"
    )
    parser.add_argument("--environment", default=None, help="Modal environment")


def _run_state(run_id: str) -> str:
    """alive / dead / unknown (no record of that run on this machine)."""
    runs = runs_dir()
    if RunLock.is_held(runs / f"{run_id}.lock"):
        return "alive"
    if (runs / f"{run_id}.json").exists():
        return "dead"
    return "unknown"


def _listing(backend: Any) -> list[SandboxInfo]:
    return list(backend.list({MARK_TAG: "1"}))


def cmd_list(args: argparse.Namespace) -> int:
    backend = make_backend(args.backend, app=args.app, environment=args.environment)
    try:
        infos = _listing(backend)
    finally:
        backend.close()
    if not infos:
        print(f"no running sandboxes on {backend.name}")
        return 0
    print(f"{'SANDBOX':32} {'RUN':24} {'RUN STATE':9} {'WORKER':10} TEST")
    for info in sorted(infos, key=lambda i: i.created_at):
        run = info.tags.get(RUN_TAG, "-")
        print(
            f"{info.id:32} {run:24} {_run_state(run):9} {info.tags.get(WORKER_TAG, '-'):10} "
            f"{info.tags.get(TEST_TAG, '-')}"
        )
    return 0


def reap(
    backend: Any, *, run: str | None = None, stale: bool = False, everything: bool = False
) -> Swept:
    """Terminate what the selection names (never a live run's, unless ``everything``); a
    run's record is forgotten only once all its sandboxes could be ended."""
    if run is not None and _run_state(run) == "alive":
        raise SandboxError(
            f"run {run} is still running (its pytest holds the run lock); "
            "use reap --all to end its sandboxes anyway"
        )
    infos = _listing(backend)
    if everything:
        chosen = [i.id for i in infos]
    elif run is not None:
        chosen = [i.id for i in infos if i.tags.get(RUN_TAG) == run]
    elif stale:
        dead = {r.run_id for r in stale_runs(runs_dir())}
        chosen = [i.id for i in infos if i.tags.get(RUN_TAG) in dead]
    else:
        raise SandboxError("say what to reap: --run ID, --stale or --all")
    done = sweep(backend.terminate, chosen)
    if done.failed:
        return done  # keep the records: a later reap (or run) tries again
    if stale:
        for record in stale_runs(runs_dir()):
            if record.backend in (backend.name, "emulator"):
                forget_run(runs_dir(), record.run_id)
    elif run is not None and _run_state(run) == "dead":
        forget_run(runs_dir(), run)
    return done


def _confirm_all(backend: Any) -> bool:
    """Ask on a terminal before touching live runs; without one, ``--all`` is the consent."""
    if not sys.stdin.isatty():
        return True
    n = len(_listing(backend))
    try:
        answer = input(f"terminate all {n} sandboxes on {backend.name}, live runs included? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def run_reap(backend: Any, target: str, *, ask: bool = True) -> int:
    """Reap ``target`` (``stale``, ``all`` or a run id), print what was done; an exit code."""
    try:
        if target == "all" and ask and not _confirm_all(backend):
            print("nothing done")
            return 1
        done = reap(
            backend,
            run=None if target in ("stale", "all") else target,
            stale=target == "stale",
            everything=target == "all",
        )
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = {"stale": "of stale runs", "all": "(all runs)"}.get(target, f"of run {target}")
    n = len(done.ended)
    print(f"terminated {n} sandbox{'es' if n != 1 else ''} {what} on {backend.name}")
    for sid in done.ended:
        print(f"  {sid}")
    if done.failed:
        print(
            f"error: could not end {len(done.failed)} (after retrying): {done.failures()}; "
            "run the reap again",
            file=sys.stderr,
        )
        return 2
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    target = "all" if args.all else "stale" if args.stale else str(args.run)
    backend = make_backend(args.backend, app=args.app, environment=args.environment)
    try:
        return run_reap(backend, target, ask=not args.yes)
    finally:
        backend.close()


def reap_from_pytest(config: Any, target: str) -> int:
    """``pytest --modal-sandbox-reap[=stale|all|RUN_ID]``: the backend and app come from pytest's
    settings (``--modal-sandbox=BACKEND``, ini, environment); no test runs."""
    from .backends import resolve_backend_name
    from .settings import read_settings

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)  # print, and ask on a tty
    try:
        settings = read_settings(config)
        name = resolve_backend_name(settings.backend)
        if name == "emulator":
            print(
                "error: --modal-sandbox-reap: the emulator backend starts a fresh emulator for "
                "each run (its sandboxes end with it); to reap a running emulator, use "
                "--modal-sandbox=modal with MODAL_SERVER_URL pointing at it",
                file=sys.stderr,
            )
            return 4
        try:
            backend = make_backend(name, **settings.backend_options())
        except SandboxError as exc:
            print(f"error: --modal-sandbox-reap: {exc}", file=sys.stderr)
            return 2
        try:
            return run_reap(backend, target.strip() or "stale")
        finally:
            backend.close()
    finally:
        if capture is not None:
            capture.resume_global_capture()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        from .emulator.cli import main as emulator_main

        return int(emulator_main(argv[1:]) or 0)
    if argv[:1] == ["images"]:
        from .images.cli import main as images_main

        return int(images_main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(
        prog="python -m pytest_modal_sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="sandboxes the plugin started that are still running")
    _backend_args(p_list)
    p_reap = sub.add_parser("reap", help="terminate leftover sandboxes")
    _backend_args(p_reap)
    which = p_reap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="ID", help="one run's sandboxes (not a live run)")
    which.add_argument("--stale", action="store_true", help="runs whose controller is gone")
    which.add_argument("--all", action="store_true", help="everything, live runs included")
    p_reap.add_argument("--yes", "-y", action="store_true", help="do not ask (for --all)")
    sub.add_parser("emulator", help="run the Modal emulator (see: emulator --help)")
    sub.add_parser("images", help="the local image cache (see: images --help)")
    args = parser.parse_args(argv)
    try:
        return cmd_list(args) if args.command == "list" else cmd_reap(args)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
