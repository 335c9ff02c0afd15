"""Can this machine run local sandboxes?  One cheap probe per process, with the fix named.

The probe starts a real (tiny) sandbox with the same kinds of namespaces a sandbox uses (a user
namespace too, as root), because the usual failure - user namespaces disabled by AppArmor
(Ubuntu 24.04) or by a sysctl - only shows when bubblewrap tries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

from .errors import RuntimeUnavailable

__all__ = ["Tools", "check"]

USERNS_FIX = (
    "user namespaces are not allowed here (the local runtime confines every sandbox in one, "
    "also as root). Fix one of: "
    "Ubuntu 24.04+ (AppArmor): `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` "
    "(or install an AppArmor profile allowing userns for /usr/bin/bwrap); "
    "Debian/older kernels: `sudo sysctl -w kernel.unprivileged_userns_clone=1`; "
    "`sudo sysctl -w user.max_user_namespaces=15000` if it is 0"
)


class Tools:
    """Absolute paths of the programs the runtime runs, found once."""

    def __init__(self, bwrap: str, nsenter: str, true: str, slirp4netns: str | None) -> None:
        self.bwrap = bwrap
        self.nsenter = nsenter
        self.true = true
        self.slirp4netns = slirp4netns  # needed only by sandboxes with egress

    def require_slirp4netns(self) -> str:
        """slirp4netns, or :class:`RuntimeUnavailable` with the fix."""
        if self.slirp4netns is None:
            raise RuntimeUnavailable(
                "slirp4netns is not installed (no `slirp4netns` on PATH): local sandboxes "
                "reach the network through it, as they do on Modal. Fix: `apt-get install "
                "slirp4netns` (Debian/Ubuntu), `dnf install slirp4netns` (Fedora); or give "
                "the sandbox block_network=True"
            )
        if os.geteuid() != 0 and not os.access(TUN, os.R_OK | os.W_OK):
            raise RuntimeUnavailable(
                f"{TUN} is not open to this user, and slirp4netns needs it to give local "
                "sandboxes a network (as they have on Modal). Fix: `sudo chmod 0666 "
                f"{TUN}` (what udev does on most distributions), run as root, or give the "
                "sandbox block_network=True"
            )
        return self.slirp4netns


TUN = "/dev/net/tun"
_lock = threading.Lock()
_result: Tools | RuntimeUnavailable | None = None


def _probe() -> Tools:
    if not sys.platform.startswith("linux"):
        raise RuntimeUnavailable(
            f"the local runtime needs Linux (bubblewrap namespaces); this is {sys.platform}. "
            "Use the modal backend instead."
        )
    if not hasattr(os, "pidfd_open"):
        raise RuntimeUnavailable("the local runtime needs Linux >= 5.3 (pidfd_open)")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeUnavailable(
            "bubblewrap is not installed (no `bwrap` on PATH): "
            "`apt-get install bubblewrap` (Debian/Ubuntu), `dnf install bubblewrap` (Fedora)"
        )
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise RuntimeUnavailable(
            "nsenter is not installed: `apt-get install util-linux` (Debian/Ubuntu), "
            "`dnf install util-linux-core` (Fedora)"
        )
    true = shutil.which("true") or "/bin/true"
    argv = [bwrap, "--unshare-user", "--uid", "0", "--gid", "0"]
    argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", true]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeUnavailable(f"bubblewrap could not be run ({bwrap}): {exc}") from exc
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        lowered = err.lower()
        if any(s in lowered for s in ("uid map", "namespace", "permission", "not permitted")):
            raise RuntimeUnavailable(f"{USERNS_FIX}. bubblewrap said: {err}")
        raise RuntimeUnavailable(
            f"bubblewrap cannot start a sandbox here (exit {done.returncode}): {err}"
        )
    return Tools(bwrap, nsenter, true, shutil.which("slirp4netns"))


def check() -> Tools:
    """The tools, probed once per process; raises :class:`RuntimeUnavailable` with the fix."""
    global _result
    with _lock:
        if _result is None:
            try:
                _result = _probe()
            except RuntimeUnavailable as exc:
                _result = exc
        if isinstance(_result, RuntimeUnavailable):
            raise RuntimeUnavailable(str(_result))
        return _result
