"""``python -m pytest_modal_sandbox.emulator``: serve until SIGINT/SIGTERM, then clean up.

Prints ``MODAL_SERVER_URL=http://127.0.0.1:PORT`` as the first line on stdout (flushed), then
``MODAL_EMULATOR_CA_FILE=<path>`` (the CA that signed the tunnels' TLS certificate).  With
``MODAL_SERVER_URL``, ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET`` set, the real ``modal``
client works against it unchanged.  On SIGINT/SIGTERM every sandbox it started is terminated
and it exits 0.

Named secrets (for ``modal.Secret.from_name``) come from ``--secret NAME=KEY=VALUE``
(repeatable; one flag per key), from ``--secrets-file`` (JSON ``{"name": {"KEY": "VALUE"}}``),
or from the client itself (``modal.Secret.objects.create``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path

from ..errors import SandboxError
from .images import IMAGES_MODES
from .server import Emulator, EmulatorOptions, log_status

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def _secret_flag(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    key, sep2, value = rest.partition("=")
    if not (name and sep and key and sep2):
        raise argparse.ArgumentTypeError(f"expected NAME=KEY=VALUE, got {text!r}")
    return name, key, value


def _load_secrets_file(path: str) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"modal emulator: --secrets-file {path}: {exc}") from None
    ok = isinstance(data, dict) and all(
        isinstance(name, str)
        and isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        for name, env in data.items()
    )
    if not ok:
        raise SystemExit(
            f"modal emulator: --secrets-file {path}: expected a JSON object "
            '{"secret-name": {"KEY": "VALUE", ...}, ...} of strings'
        )
    return dict(data)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pytest_modal_sandbox.emulator",
        description="Offline emulator of Modal's sandbox API for the real modal client; "
        "sandboxes run on the local bubblewrap runtime.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        choices=LOOPBACK_HOSTS,
        help="address to listen on (loopback only: the client accepts a plain-http "
        "command router only on localhost)",
    )
    p.add_argument("--port", type=int, default=0, help="port (default 0: the kernel picks)")
    p.add_argument("--token-id", help="accept only this MODAL_TOKEN_ID (with --token-secret)")
    p.add_argument("--token-secret", help="accept only this MODAL_TOKEN_SECRET")
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="added to every RPC, e.g. 80 for a cloud round trip",
    )
    p.add_argument(
        "--start-latency-ms",
        type=float,
        default=0.0,
        help="a sandbox's container runs this long after its create, which answers at once; "
        "exec, stdio, tunnels and readiness wait for it (e.g. 1000, as on Modal)",
    )
    p.add_argument(
        "--state-dir",
        help="sandbox state, volumes, blobs and certificates (default: the user's "
        "state dir + a temporary directory)",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        type=_secret_flag,
        metavar="NAME=KEY=VALUE",
        help="define a named secret key (repeatable)",
    )
    p.add_argument(
        "--secrets-file",
        action="append",
        default=[],
        help='JSON file {"name": {"KEY": "VALUE"}} (repeatable)',
    )
    p.add_argument(
        "--environment",
        action="append",
        default=[],
        metavar="NAME",
        help="an environment besides 'main' (repeatable)",
    )
    p.add_argument(
        "--idle-timeout-status",
        default="timeout",
        choices=("timeout", "terminated", "idle_timeout"),
        help="how a sandbox ended by idle_timeout is reported (default: timeout, "
        "i.e. returncode 124 and SandboxTimeoutError from wait())",
    )
    p.add_argument(
        "--images",
        default="auto",
        choices=IMAGES_MODES,
        help="what modal.Image.from_registry/debian_slim bases run on: 'pull' the image (a "
        "base that cannot be had fails the build), the 'host' root (a private view; RUN steps are "
        "skipped), or 'auto' (default): pull, else the host root with a warning",
    )
    p.add_argument(
        "--host-image",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run images whose reference matches this fnmatch pattern on the host root "
        "(repeatable)",
    )
    p.add_argument(
        "--build-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="limit for building one image layer (default 3600)",
    )
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fail this fraction of RPCs (0-1; both services, unary and streaming) with a "
        "status the client retries, before the work, after it (the answer lost) or midway "
        "through a stream (default 0)",
    )
    p.add_argument(
        "--create-rate",
        type=float,
        default=0.0,
        metavar="N",
        help="at most N sandbox creates per second; the excess is throttled as Modal "
        "throttles (RESOURCE_EXHAUSTED with a retry-after the client honours; default: no limit)",
    )
    p.add_argument(
        "--max-sandboxes",
        type=int,
        default=0,
        metavar="N",
        help="at most N sandboxes running at once; a create over it is RESOURCE_EXHAUSTED "
        "(default: no limit)",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="seed of the injected faults, to reproduce them (default: random)",
    )
    p.add_argument("--list-page-size", type=int, default=100, help="SandboxListV2 page size")
    p.add_argument("--stats-file", help="write the RPC counts (JSON) here on exit")
    return p


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    secrets: dict[str, dict[str, str]] = {}
    for path in args.secrets_file:
        for name, env in _load_secrets_file(path).items():
            secrets.setdefault(name, {}).update(env)
    for name, key, value in args.secret:
        secrets.setdefault(name, {})[key] = value
    return EmulatorOptions(
        host=args.host,
        port=args.port,
        token_id=args.token_id,
        token_secret=args.token_secret,
        latency_ms=args.latency_ms,
        start_latency_ms=args.start_latency_ms,
        state_dir=args.state_dir,
        secrets=secrets,
        environments=args.environment,
        idle_timeout_status=args.idle_timeout_status,
        list_page_size=args.list_page_size,
        images=args.images,
        host_images=args.host_image,
        build_timeout=args.build_timeout,
        fault_rate=args.fault_rate,
        create_rate=args.create_rate,
        max_sandboxes=args.max_sandboxes,
        seed=args.seed,
    )


async def _run(options: EmulatorOptions, stats_file: str | None) -> int:
    emulator = Emulator(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await emulator.start()
    except (SandboxError, OSError) as exc:
        await emulator.stop()
        _log(f"cannot start: {exc}")
        return 1
    print(f"MODAL_SERVER_URL={emulator.url}", flush=True)
    print(f"MODAL_EMULATOR_CA_FILE={emulator.ca_file}", flush=True)
    _log(f"serving Modal's sandbox API at {emulator.url}; stop with Ctrl-C or SIGTERM")
    if options.fault_rate:
        _log(f"injecting faults into {options.fault_rate:g} of RPCs, seed {emulator.chaos.seed}")
    try:
        await stop.wait()
    finally:
        running = emulator.stats_snapshot().get("sandboxes", {}).get("running", 0)
        await emulator.stop()
        _log(f"stopped; terminated {running} running sandbox(es)")
        if stats_file:
            Path(stats_file).write_text(json.dumps(emulator.stats_snapshot(), indent=2) + "\n")
    return 0


def _log(message: str) -> None:
    log_status(message)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.token_id is None) != (args.token_secret is None):
        p.error("--token-id and --token-secret must be given together")
    if args.latency_ms < 0:
        p.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    if args.start_latency_ms < 0:
        p.error(f"--start-latency-ms must be >= 0, got {args.start_latency_ms}")
    if args.list_page_size < 1:
        p.error(f"--list-page-size must be >= 1, got {args.list_page_size}")
    if not args.build_timeout > 0:
        p.error(f"--build-timeout must be > 0, got {args.build_timeout}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0-65535, got {args.port}")
    if not 0 <= args.fault_rate <= 1:
        p.error(f"--fault-rate must be between 0 and 1, got {args.fault_rate}")
    if args.create_rate < 0:
        p.error(f"--create-rate must be >= 0, got {args.create_rate}")
    if args.max_sandboxes < 0:
        p.error(f"--max-sandboxes must be >= 0, got {args.max_sandboxes}")
    return asyncio.run(_run(options_from_args(args), args.stats_file))
