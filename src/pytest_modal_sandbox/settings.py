"""Options, ini keys and environment variables: one table, one precedence rule.

Precedence: CLI > environment > ini > default (a marker overrides all of them for its test).
Each :class:`Setting` names its option (``--modal-sandbox-<name>``), ini key
(``modal_sandbox_<name>``) and environment variable, and parses a value or says what is wrong
with it; an invalid value is a ``pytest.UsageError`` that says where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from .errors import SpecError
from .matrix import IMAGE_ENV, IMAGE_HELP, ImageOverride, parse_image_override

__all__ = ["SETTINGS", "Setting", "Settings", "add_options", "read_settings"]

BACKEND_ENV = "PYTEST_MODAL_SANDBOX_BACKEND"
KEEP_ENV = "PYTEST_MODAL_SANDBOX_KEEP_ON_FAILURE"
LOCAL_IMAGES_ENV = "PYTEST_MODAL_SANDBOX_LOCAL_IMAGES"
DEFAULT_KEEP_MINUTES = 30.0
DEFAULT_APP = "pytest-modal-sandbox"
PROGRESS_MODES = ("auto", "plain", "off")
AHEAD_DEFAULTS = {"modal": 4, "emulator": 4, "local": 2}
"""``--modal-sandbox-ahead=auto`` by backend: what bench/bench_ahead.py measured (README)."""

ENABLE_HELP = (
    "run tests that need a sandbox, on BACKEND: auto (Modal when credentials are configured, "
    "else local), local, modal or emulator. Without it, such tests are skipped."
)
ENABLE_INI_HELP = "enable sandboxes without --modal-sandbox (default: false)"
BACKEND_INI_HELP = "backend when enabled: auto, local, modal or emulator (default: auto)"
SIGTERM_HELP = "treat SIGTERM like Ctrl-C so sandboxes are cleaned up (default: true)"
REAP_HELP = (
    "reap leftover sandboxes and exit without running tests: stale (runs whose pytest is gone, "
    "the default), all (live runs too; asks on a tty) or a RUN_ID"
)
HOST_IMAGE_HELP = (
    "local backend: map images matching this pattern to the host filesystem instead of pulling "
    "them, e.g. 'redis:*' (repeatable)"
)


# -- parsers: a value, or ValueError saying what is wrong (after "<where>: <value>") ----------


def _choice(choices: Callable[[], tuple[str, ...]], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices():
            raise ValueError(f"is not {what}; choose one of {', '.join(choices())}")
        return value

    return parse


def _backends() -> tuple[str, ...]:
    from .backends import BACKENDS  # when read, not at start-up: an inactive plugin stays cheap

    return BACKENDS


def _local_image_modes() -> tuple[str, ...]:
    from .backends.local import LOCAL_IMAGE_MODES

    return LOCAL_IMAGE_MODES


def _app(text: str) -> str:
    app = text.strip()
    if not app or len(app) > 64 or not all(c.isalnum() or c in "-_." for c in app):
        raise ValueError("is not a valid Modal app name (1-64 of letters, digits, -_.)")
    return app


def _count(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"is not a number of {what} (>= 0)")
        return value

    return parse


def _seconds(text: str) -> int:
    """A whole number of seconds (Modal takes ints), 1 to 24 hours."""
    try:
        seconds = int(text.strip())
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 86400:
        raise ValueError("is not a whole number of seconds between 1 and 86400")
    return seconds


def _wait(text: str) -> int:
    """A whole number of seconds to wait, 0 (not at all) to an hour."""
    try:
        seconds = int(text.strip())
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= 3600:
        raise ValueError("is not a whole number of seconds between 0 and 3600")
    return seconds


def _minutes(text: str) -> float:
    value = text.strip().lower()
    if value in ("off", "no", "false"):
        return 0.0
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not 0 <= minutes <= 24 * 60:
        raise ValueError("is not a number of minutes between 0 and 1440")
    return minutes


def _milliseconds(text: str) -> float:
    """Up to an hour, in milliseconds (the emulator's added latencies)."""
    try:
        ms = float(text.strip())
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 3_600_000:
        raise ValueError("is not a number of milliseconds between 0 and 3600000")
    return ms


def _ahead(text: str) -> int | None:
    """A number of sandboxes, or None for ``auto`` (the backend's default)."""
    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError("is not a number of sandboxes (>= 0) or auto")
    return count


@dataclass(frozen=True)
class Setting:
    """One setting: ``--modal-sandbox-<option>``, ini ``modal_sandbox_<option>``, maybe an
    environment variable; ``field`` is its name in :class:`Settings`."""

    field: str
    option: str
    help: str
    parse: Callable[[str], Any]
    default: str
    metavar: str
    env: str | None = None
    bare: str | None = None  # the value of the option given without one

    @property
    def dest(self) -> str:
        return "modal_sandbox_" + self.option.replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


SETTINGS = (
    Setting("app", "app", "Modal app that owns the sandboxes (default: pytest-modal-sandbox)",
            _app, DEFAULT_APP, "NAME"),
    Setting("environment", "environment", "Modal environment (default: the profile's default)",
            str.strip, "", "NAME"),
    Setting("log_lines", "log-lines", "lines of each daemon's log shown when it fails "
            "(default: 20)", _count("lines"), "20", "N"),
    Setting("lease", "lease", "Modal path: seconds each heartbeat exec keeps an owned sandbox "
            "busy; with the idle timeout it bounds how long a sandbox outlives a SIGKILLed pytest "
            "(default: 60)", _seconds, "60", "S"),
    Setting("idle_timeout", "idle-timeout", "Modal path: idle_timeout (s) for sandboxes whose "
            "spec sets none, the dead-man switch after the last heartbeat (default: 60)",
            _seconds, "60", "S"),
    Setting("quota_wait", "quota-wait", "Modal path: seconds a sandbox create refused for a "
            "workspace quota (too many sandboxes at once) keeps retrying for a slot to free, "
            "before its test errors naming the quota (default: 60)", _wait, "60", "S"),
    Setting("keep_on_failure", "keep-on-failure", "keep a failed test's function-scoped sandbox "
            "alive for MINUTES (default 30; still bounded by its timeout) and say in the report "
            "how to reach it; 0 turns it off", _minutes, "0", "MINUTES", KEEP_ENV,
            bare=f"{DEFAULT_KEEP_MINUTES:g}"),
    Setting("progress", "progress", "live progress while sandboxes start: auto (lines "
            "rewritten in place on a tty, plain lines otherwise), plain or off (default: auto; "
            "-q silences it)", _choice(lambda: PROGRESS_MODES, "a progress mode"), "auto",
            "auto|plain|off"),
    Setting("ahead", "ahead", "start sandboxes ahead of the tests that need them: session- and "
            "module-scoped fixtures before their first test, function-scoped ones for up to N "
            "coming tests while a test runs; 0 starts each when its test asks (default: auto, "
            f"by backend: {', '.join(f'{b} {n}' for b, n in AHEAD_DEFAULTS.items())})",
            _ahead, "auto", "N"),
    Setting("local_images", "local-images", "local backend: pull (run the declared image, "
            "pulled and cached; the default), host (map every image to a private view of the "
            "host filesystem) or auto (pull, else the host)",
            _choice(_local_image_modes, "a local image mode"), "pull", "MODE", LOCAL_IMAGES_ENV),
    Setting("emulator_latency_ms", "emulator-latency-ms", "emulator backend: milliseconds "
            "added to every RPC, e.g. 80 for a cloud round trip (default: 0)", _milliseconds,
            "0", "MS"),
    Setting("emulator_start_latency_ms", "emulator-start-latency-ms", "emulator backend: "
            "milliseconds from a sandbox's create until its container runs, e.g. 1000 as on "
            "Modal (default: 0)", _milliseconds, "0", "MS"),
)  # fmt: skip


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
    parser.addini("modal_sandbox", ENABLE_INI_HELP, type="bool", default=False)
    parser.addini("modal_sandbox_backend", BACKEND_INI_HELP, default="auto")
    for s in SETTINGS:
        extra: dict[str, Any] = {"nargs": "?", "const": s.bare} if s.bare is not None else {}
        group.addoption(
            f"--modal-sandbox-{s.option}", dest=s.dest, metavar=s.metavar, help=s.help, **extra
        )
        parser.addini(s.ini, s.help, default=s.default)
    group.addoption(
        "--modal-sandbox-image",
        dest="modal_sandbox_image",
        action="append",
        default=[],
        metavar="[OLD=]NEW",
        help=IMAGE_HELP,
    )
    group.addoption(
        "--modal-sandbox-host-image",
        dest="modal_sandbox_host_images",
        action="append",
        default=[],
        metavar="PATTERN",
        help=HOST_IMAGE_HELP,
    )
    parser.addini("modal_sandbox_host_images", HOST_IMAGE_HELP, type="linelist", default=[])
    parser.addini("modal_sandbox_sigterm", SIGTERM_HELP, type="bool", default=True)
    group.addoption(
        "--modal-sandbox-reap",
        dest="modal_sandbox_reap",
        nargs="?",
        const="stale",
        default=None,
        metavar="stale|all|RUN_ID",
        help=REAP_HELP,
    )


@dataclass(frozen=True)
class Settings:
    enabled: bool
    backend: str  # as chosen, before "auto" is resolved
    app: str = DEFAULT_APP
    environment: str = ""
    log_lines: int = 20
    sigterm: bool = True
    images: ImageOverride = dataclasses.field(default_factory=ImageOverride)
    lease: int = 60  # Modal path: heartbeat lease (s)
    idle_timeout: int = 60  # Modal path: default idle_timeout (s)
    quota_wait: int = 60  # Modal path: seconds a create refused for a quota retries
    keep_on_failure: float = 0.0  # minutes a failed test's sandbox is kept (0: off)
    progress: str = "auto"  # auto, plain or off
    ahead: int | None = None  # None: by backend (AHEAD_DEFAULTS)
    local_images: str = "pull"  # local backend: pull, host or auto
    host_images: tuple[str, ...] = ()  # local backend: patterns mapped to the host
    emulator_latency_ms: float = 0.0  # emulator backend: added to every RPC
    emulator_start_latency_ms: float = 0.0  # emulator backend: create until the container runs

    def ahead_for(self, backend: str) -> int:
        """How many function-scoped sandboxes to start ahead on ``backend`` (0: nothing)."""
        return AHEAD_DEFAULTS.get(backend, 1) if self.ahead is None else self.ahead

    def backend_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "app": self.app,
            "local_images": self.local_images,
            "host_images": list(self.host_images),
            "lease": self.lease,
            "idle_timeout": self.idle_timeout,
            "quota_wait": self.quota_wait,
        }
        if self.environment:
            options["environment"] = self.environment
        return options


def _pick(
    config: pytest.Config, dest: str, env: str | None, ini: str, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The winning value and where it came from: CLI > environment > ini (> its default)."""
    value = config.getoption(dest)
    if value not in (None, ""):
        return str(value), f"--{dest.replace('_', '-')}"
    if env and environ.get(env):
        return environ[env], f"the {env} environment variable"
    return str(config.getini(ini)), f"ini option {ini}"


def _read(config: pytest.Config, s: Setting, environ: Mapping[str, str]) -> Any:
    value, where = _pick(config, s.dest, s.env, s.ini, environ)
    try:
        return s.parse(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {value!r} {exc}") from None


def read_settings(config: pytest.Config, environ: Mapping[str, str] = os.environ) -> Settings:
    enabled = config.getoption("modal_sandbox") is not None or bool(config.getini("modal_sandbox"))
    value, where = _pick(config, "modal_sandbox", BACKEND_ENV, "modal_sandbox_backend", environ)
    try:
        backend = _choice(_backends, "a sandbox backend")(value or "auto")
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {value.strip().lower()!r} {exc}") from None
    images, where = list(config.getoption("modal_sandbox_image") or []), "--modal-sandbox-image"
    if not images:
        images = [v for v in environ.get(IMAGE_ENV, "").split(",") if v.strip()]
        where = f"the {IMAGE_ENV} environment variable"
    try:
        override = parse_image_override(images, where)
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    patterns = config.getoption("modal_sandbox_host_images") or config.getini(
        "modal_sandbox_host_images"
    )
    return Settings(
        enabled=enabled,
        backend=backend,
        images=override,
        host_images=tuple(p.strip() for p in patterns if p.strip()),
        sigterm=bool(config.getini("modal_sandbox_sigterm")),
        **{s.field: _read(config, s, environ) for s in SETTINGS},
    )
