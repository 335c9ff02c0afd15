"""What makes two launches the same shape (runtime/warm.py): only what a sandbox started ahead
cannot change once it runs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pytest_modal_sandbox.runtime import warm


def _launch(
    sandbox: str, hostname: str = "sb-1", state: str = "/state", **own: Any
) -> dict[str, Any]:
    directory = f"{state}/{sandbox}"
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n".encode()
    launch: dict[str, Any] = {
        "bwrap_argv": [
            *["bwrap", "--hostname", hostname, "--bind", f"{directory}/ovl/root", "/"],
            *["--chdir", "/", "--", "sleep", "60"],
        ],
        "env": {"PATH": "/usr/bin:/bin"},
        "stdout": f"{directory}/stdout",
        "stderr": f"{directory}/stderr",
        "result": f"{directory}/result.json",
        "timeout": 300.0,
        "idle_timeout": None,
        "owner_lock": None,
        "ready_fd": 5,
        "owner_fd": 6,
        "stdin_fd": None,
        "cleanup": [f"{directory}/ovl"],
        "view": {
            "kind": "overlay",
            "root": f"{directory}/ovl/root",
            "ovl": f"{directory}/ovl",
            "layers": [
                {
                    "lower": "/",
                    "target": "/",
                    "mode": "overlay",
                    "entries": [
                        ["opaque", "root", 0o700, 0, 0],
                        ["file", "etc/hosts", 0o644, 0, 0, hosts],
                    ],
                }
            ],
        },
        "walls": {"userns": "pair", "seccomp": b"\x06\0\0\0\0\0\xff\x7f"},
        "net": {"slirp": "/usr/bin/slirp4netns", "routes": None},
    }
    launch.update(own)
    return launch


def test_what_is_the_sandboxs_own_does_not_change_its_shape() -> None:
    first = _launch("sb-A", "sb-a")
    second = _launch("sb-B", "db", env={"X": "1"}, timeout=5.0, ready_fd=9, owner_fd=None)
    second["bwrap_argv"][-2:] = ["redis-server", "--port", "6379"]
    second["net"]["routes"] = [("10.0.0.0", 8)]
    assert warm.shape(first) is not None
    assert warm.shape(first) == warm.shape(second)


@pytest.mark.parametrize(
    "change",
    [
        *["hidden path", "workdir", "walls", "no network", "stdin pipe", "an image root"],
        *["not root", "another state dir"],
    ],
)
def test_what_the_sandbox_was_started_with_changes_its_shape(change: str) -> None:
    launch = _launch("sb-B")
    changed = copy.deepcopy(launch)
    if change == "hidden path":
        changed["view"]["layers"][0]["entries"].append(["whiteout", "srv/key"])
    elif change == "workdir":
        changed["bwrap_argv"][changed["bwrap_argv"].index("--chdir") + 1] = "/srv"
    elif change == "walls":
        changed["walls"]["seccomp"] = b""
    elif change == "no network":
        changed["net"] = None
    elif change == "stdin pipe":
        changed["stdin_fd"] = 8
    elif change == "an image root":
        changed["view"]["layers"][0]["lower"] = "/images/redis"
    elif change == "not root":
        changed["walls"]["userns"] = "own"
    else:
        changed = _launch("sb-B", state="/other-state")
    assert warm.shape(changed) != warm.shape(launch)


def test_the_spec_is_the_environment_with_pwd_then_the_command() -> None:
    launch = _launch("sb-A", env={"A": "x y", "B": "é"})
    assert warm.encode_spec(launch) == "A=x y\0B=é\0PWD=/\0sleep\x0060\0".encode()
    launch["bwrap_argv"][-2:] = ["K=V", "true"]
    assert warm.encode_spec(launch) is None  # env would take the command for a variable
    launch["bwrap_argv"][-2:] = ["echo", "\x01"]
    assert warm.encode_spec(launch) is None  # bash keeps 0x01 for itself
    launch["bwrap_argv"][-2:] = ["echo", "x" * warm.SPEC_MAX]
    assert warm.encode_spec(launch) is None


def test_a_sandbox_started_ahead_is_the_template_in_its_own_place() -> None:
    template = _launch("sb-A", "sb-a")
    launch = warm.shaped_like(template, "/state")
    assert launch["view"]["root"] == "/state/ovl/root" and launch["stdout"] == "/state/stdout"
    argv = launch["bwrap_argv"]
    assert argv[argv.index("--hostname") + 1] == warm.STANDIN_HOSTNAME
    assert argv[: argv.index("--") + 1] == [
        "bwrap",
        "--hostname",
        warm.STANDIN_HOSTNAME,
        *["--bind", "/state/ovl/root", "/", "--chdir", "/", "--"],
    ]
    hosts = launch["view"]["layers"][0]["entries"][1]
    assert hosts[:2] == ["file", "etc/hosts"] and hosts[5] == b""  # written when handed over
    assert launch["net"]["routes"] == [] and launch["ready_fd"] is None
    assert template["view"]["root"] == "/state/sb-A/ovl/root"  # the template is untouched
