"""Options, ini keys and environment variables, resolved with one precedence rule.

Precedence: CLI > environment > ini > default (a marker overrides all of them for its test).
An invalid value is a ``pytest.UsageError`` that says where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from .errors import SpecError
from .matrix import IMAGE_ENV, IMAGE_HELP, ImageOverride, parse_image_override

ENABLE_HELP = (
    "run tests that need a sandbox, on BACKEND: auto (Modal when credentials are configured, "
    "else local), local, modal or emulator. Without it, such tests are skipped."
)
ENABLE_INI_HELP = "enable sandboxes without --modal-sandbox (default: false)"
BACKEND_INI_HELP = "backend when enabled: auto, local, modal or emulator (default: auto)"
APP_HELP = "Modal app that owns the sandboxes (default: pytest-modal-sandbox)"
ENVIRONMENT_HELP = "Modal environment (default: the profile's default)"
LOG_LINES_HELP = "lines of each daemon's log shown when it fails (default: 20)"
SIGTERM_HELP = "treat SIGTERM like Ctrl-C so sandboxes are cleaned up (default: true)"
LEASE_HELP = (
    "Modal path: seconds each heartbeat exec keeps an owned sandbox busy; with the idle timeout "
    "it bounds how long a sandbox outlives a SIGKILLed pytest (default: 60)"
)
IDLE_HELP = (
    "Modal path: idle_timeout (s) for sandboxes whose spec sets none, the dead-man switch "
    "after the last heartbeat (default: 60)"
)
KEEP_HELP = (
    "keep a failed test's function-scoped sandbox alive for MINUTES (default 30; still bounded "
    "by its timeout) and say in the report how to reach it; 0 turns it off"
)
PROGRESS_HELP = (
    "live progress while sandboxes start: auto (lines rewritten in place on a tty, plain lines "
    "otherwise), plain or off (default: auto; -q silences it)"
)
PRESTART_HELP = (
    "start the session- and module-scoped sandbox fixtures the selected tests use concurrently, "
    "in the background, before the first test needs them: on or off (default: on)"
)
REAP_HELP = (
    "reap leftover sandboxes and exit without running tests: stale (runs whose pytest is gone, "
    "the default), all (live runs too; asks on a tty) or a RUN_ID"
)

LOCAL_IMAGES_HELP = (
    "local backend: pull (run the declared image, pulled and cached; the default), host (map "
    "every image to a private view of the host filesystem) or auto (pull, else the host)"
)
HOST_IMAGE_HELP = (
    "local backend: map images matching this pattern to the host filesystem instead of pulling "
    "them, e.g. 'redis:*' (repeatable)"
)
LOCAL_IMAGES_ENV = "PYTEST_MODAL_SANDBOX_LOCAL_IMAGES"
BACKEND_ENV = "PYTEST_MODAL_SANDBOX_BACKEND"
KEEP_ENV = "PYTEST_MODAL_SANDBOX_KEEP_ON_FAILURE"
DEFAULT_KEEP_MINUTES = 30.0
PROGRESS_MODES = ("auto", "plain", "off")
DEFAULT_APP = "pytest-modal-sandbox"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("modal-sandbox", "ephemeral sandboxes (pytest-modal-sandbox)")
    group.addoption(
        "--modal-sandbox",
        dest="modal_sandbox",
        nargs="?",
        const="",
        default=None,
        metavar="BACKEND",
        help=ENABLE_HELP,
    )
    group.addoption("--modal-sandbox-app", dest="modal_sandbox_app", metavar="NAME", help=APP_HELP)
    group.addoption(
        "--modal-sandbox-environment",
        dest="modal_sandbox_environment",
        metavar="NAME",
        help=ENVIRONMENT_HELP,
    )
    group.addoption(
        "--modal-sandbox-log-lines",
        dest="modal_sandbox_log_lines",
        metavar="N",
        help=LOG_LINES_HELP,
    )
    group.addoption(
        "--modal-sandbox-image",
        dest="modal_sandbox_image",
        action="append",
        default=[],
        metavar="[OLD=]NEW",
        help=IMAGE_HELP,
    )
    group.addoption(
        "--modal-sandbox-local-images",
        dest="modal_sandbox_local_images",
        metavar="MODE",
        help=LOCAL_IMAGES_HELP,
    )
    group.addoption(
        "--modal-sandbox-host-image",
        dest="modal_sandbox_host_images",
        action="append",
        default=[],
        metavar="PATTERN",
        help=HOST_IMAGE_HELP,
    )
    parser.addini("modal_sandbox_local_images", LOCAL_IMAGES_HELP, default="pull")
    parser.addini("modal_sandbox_host_images", HOST_IMAGE_HELP, type="linelist", default=[])
    parser.addini("modal_sandbox", ENABLE_INI_HELP, type="bool", default=False)
    parser.addini("modal_sandbox_backend", BACKEND_INI_HELP, default="auto")
    parser.addini("modal_sandbox_app", APP_HELP, default=DEFAULT_APP)
    parser.addini("modal_sandbox_environment", ENVIRONMENT_HELP, default="")
    parser.addini("modal_sandbox_log_lines", LOG_LINES_HELP, default="20")
    parser.addini("modal_sandbox_sigterm", SIGTERM_HELP, type="bool", default=True)
    group.addoption(
        "--modal-sandbox-lease", dest="modal_sandbox_lease", metavar="S", help=LEASE_HELP
    )
    group.addoption(
        "--modal-sandbox-idle-timeout",
        dest="modal_sandbox_idle_timeout",
        metavar="S",
        help=IDLE_HELP,
    )
    group.addoption(
        "--modal-sandbox-reap",
        dest="modal_sandbox_reap",
        nargs="?",
        const="stale",
        default=None,
        metavar="stale|all|RUN_ID",
        help=REAP_HELP,
    )
    group.addoption(
        "--modal-sandbox-keep-on-failure",
        dest="modal_sandbox_keep_on_failure",
        nargs="?",
        const=f"{DEFAULT_KEEP_MINUTES:g}",
        default=None,
        metavar="MINUTES",
        help=KEEP_HELP,
    )
    group.addoption(
        "--modal-sandbox-progress",
        dest="modal_sandbox_progress",
        metavar="auto|plain|off",
        help=PROGRESS_HELP,
    )
    group.addoption(
        "--modal-sandbox-prestart",
        dest="modal_sandbox_prestart",
        metavar="on|off",
        help=PRESTART_HELP,
    )
    parser.addini("modal_sandbox_keep_on_failure", KEEP_HELP, default="0")
    parser.addini("modal_sandbox_progress", PROGRESS_HELP, default="auto")
    parser.addini("modal_sandbox_prestart", PRESTART_HELP, default="on")
    parser.addini("modal_sandbox_lease", LEASE_HELP, default="60")
    parser.addini("modal_sandbox_idle_timeout", IDLE_HELP, default="60")


@dataclass(frozen=True)
class Settings:
    enabled: bool
    backend: str  # as chosen, before "auto" is resolved
    app: str
    environment: str | None
    log_lines: int
    sigterm: bool
    images: ImageOverride = dataclasses.field(default_factory=ImageOverride)
    lease: int = 60  # Modal path: heartbeat lease (s)
    idle_timeout: int = 60  # Modal path: default idle_timeout (s)
    keep_on_failure: float = 0.0  # minutes a failed test's sandbox is kept (0: off)
    progress: str = "auto"  # auto, plain or off
    prestart: bool = True
    local_images: str = "pull"  # local backend: pull, host or auto
    host_images: tuple[str, ...] = ()  # local backend: patterns mapped to the host

    def backend_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"app": self.app}
        options["local_images"] = self.local_images
        options["host_images"] = list(self.host_images)
        if self.environment:
            options["environment"] = self.environment
        options["lease"] = self.lease
        options["idle_timeout"] = self.idle_timeout
        return options


def _pick(
    config: pytest.Config, cli: str, env: str | None, ini: str, environ: Mapping[str, str]
) -> tuple[Any, str]:
    """The winning value and a description of where it came from."""
    value = config.getoption(cli)
    if value not in (None, ""):
        return value, f"--{cli.replace('_', '-')}"
    if env and environ.get(env):
        return environ[env], f"the {env} environment variable"
    return config.getini(ini), f"ini option {ini}"


def _seconds(config: pytest.Config, key: str, environ: Mapping[str, str]) -> int:
    """A whole number of seconds (Modal takes ints), 1 to 24 hours."""
    value, where = _pick(config, key, None, key, environ)
    try:
        seconds = int(str(value).strip())
        if not 1 <= seconds <= 86400:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(
            f"{where}: {value!r} is not a whole number of seconds between 1 and 86400"
        ) from None
    return seconds


def _keep_minutes(config: pytest.Config, environ: Mapping[str, str]) -> float:
    value, where = _pick(
        config, "modal_sandbox_keep_on_failure", KEEP_ENV, "modal_sandbox_keep_on_failure", environ
    )
    text = str(value).strip().lower()
    if text in ("off", "no", "false"):
        return 0.0
    try:
        minutes = float(text)
        if not 0 <= minutes <= 24 * 60:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(
            f"{where}: {value!r} is not a number of minutes between 0 and 1440"
        ) from None
    return minutes


def _progress(config: pytest.Config, environ: Mapping[str, str]) -> str:
    value, where = _pick(config, "modal_sandbox_progress", None, "modal_sandbox_progress", environ)
    mode = str(value).strip().lower()
    if mode not in PROGRESS_MODES:
        raise pytest.UsageError(
            f"{where}: {value!r} is not a progress mode; choose one of {', '.join(PROGRESS_MODES)}"
        )
    return mode


def _switch(config: pytest.Config, key: str, environ: Mapping[str, str]) -> bool:
    value, where = _pick(config, key, None, key, environ)
    text = str(value).strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise pytest.UsageError(f"{where}: {value!r} is not on or off")


def _local_images(config: pytest.Config, environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    from .backends import LOCAL_IMAGE_MODES

    value, where = _pick(
        config,
        "modal_sandbox_local_images",
        LOCAL_IMAGES_ENV,
        "modal_sandbox_local_images",
        environ,
    )
    mode = str(value).strip().lower()
    if mode not in LOCAL_IMAGE_MODES:
        raise pytest.UsageError(
            f"{where}: {value!r} is not a local image mode; "
            f"choose one of {', '.join(LOCAL_IMAGE_MODES)}"
        )
    patterns = config.getoption("modal_sandbox_host_images") or config.getini(
        "modal_sandbox_host_images"
    )
    return mode, tuple(p.strip() for p in patterns if p.strip())


def read_settings(config: pytest.Config, environ: Mapping[str, str] = os.environ) -> Settings:
    flag = config.getoption("modal_sandbox")
    enabled = flag is not None or bool(config.getini("modal_sandbox"))
    backend, where = _pick(config, "modal_sandbox", BACKEND_ENV, "modal_sandbox_backend", environ)
    backend = str(backend).strip().lower() or "auto"
    from .backends import BACKENDS

    if backend not in BACKENDS:
        raise pytest.UsageError(
            f"{where}: {backend!r} is not a sandbox backend; choose one of {', '.join(BACKENDS)}"
        )
    app, where = _pick(config, "modal_sandbox_app", None, "modal_sandbox_app", environ)
    app = str(app).strip()
    if not app or len(app) > 64 or not all(c.isalnum() or c in "-_." for c in app):
        raise pytest.UsageError(
            f"{where}: {app!r} is not a valid Modal app name (1-64 of letters, digits, -_.)"
        )
    environment, _ = _pick(
        config, "modal_sandbox_environment", None, "modal_sandbox_environment", environ
    )
    lines, where = _pick(
        config, "modal_sandbox_log_lines", None, "modal_sandbox_log_lines", environ
    )
    try:
        log_lines = int(lines)
        if log_lines < 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"{where}: {lines!r} is not a number of lines (>= 0)") from None
    cli_images = config.getoption("modal_sandbox_image") or []
    if cli_images:
        image_values, where = list(cli_images), "--modal-sandbox-image"
    else:
        env_value = environ.get(IMAGE_ENV, "")
        image_values = [v for v in env_value.split(",") if v.strip()]
        where = f"the {IMAGE_ENV} environment variable"
    try:
        images = parse_image_override(image_values, where)
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    lease = _seconds(config, "modal_sandbox_lease", environ)
    idle_timeout = _seconds(config, "modal_sandbox_idle_timeout", environ)
    local_images, host_images = _local_images(config, environ)
    return Settings(
        local_images=local_images,
        host_images=host_images,
        keep_on_failure=_keep_minutes(config, environ),
        progress=_progress(config, environ),
        prestart=_switch(config, "modal_sandbox_prestart", environ),
        lease=lease,
        idle_timeout=idle_timeout,
        images=images,
        enabled=enabled,
        backend=backend,
        app=app,
        environment=str(environment).strip() or None,
        log_lines=log_lines,
        sigterm=bool(config.getini("modal_sandbox_sigterm")),
    )
