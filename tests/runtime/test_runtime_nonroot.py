"""The runtime as an unprivileged user: bwrap with a user namespace, nsenter -U, relay tunnels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import SRC

NOBODY = 65534
SETPRIV = shutil.which("setpriv")


# The runtime re-runs sys.executable (keeper, relay), and needs the package and its
# dependencies: all of that must work as nobody too (a checkout under a 0700 home would not).
PROBE = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True); "
    "import pytest_modal_sandbox.runtime; print(sys.version_info[:2])"
)


def _nobody_env(home: str) -> dict[str, str]:
    path = os.pathsep.join([SRC, sysconfig.get_paths()["purelib"]])
    return {"PATH": os.environ["PATH"], "PYTHONPATH": path, "HOME": home}


def _as_nobody(
    python: str, script: str, *args: str, home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``python`` as the unprivileged user, able to import this checkout."""
    return subprocess.run(
        [
            SETPRIV or "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            python,
            "-c",
            script,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_nobody_env(str(home)),
        cwd="/",  # ours may be a directory the user cannot enter
    )


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, uid, uid)


def _python_for_nobody() -> str | None:
    """An interpreter of our version that an unprivileged user may run (ours may sit in a
    0700 home), which can import our dependencies from our site-packages."""
    for candidate in (
        sys.executable,
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        probe = _as_nobody(candidate, PROBE, home=Path("/"))
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return candidate
    return None


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root to drop to nobody with setpriv"
)

SCRIPT = textwrap.dedent("""
    import json, os, socket, sys, time
    from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
    rt = LocalRuntime(sys.argv[1])
    server = ("import socket\\ns = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen()\\n"
              "while True:\\n    c, _ = s.accept(); c.sendall(b'hi'); c.close()")
    sb = rt.create(SandboxConfig(command=["python3", "-c", server], ports=[8000], workdir="/w",
                                 block_network=True))
    out = {"uid": os.getuid()}
    r = sb.exec(["sh", "-c", "id -u; pwd; touch f && ls"])
    out["exec"] = [r.returncode, r.stdout.decode()]
    out["host_write"] = sb.exec(["sh", "-c", "echo x > /etc/pms-nonroot"]).returncode
    # the walls: homes hidden, and what hides them or keeps / read-only cannot be undone
    walls = ("ls -A /root /home; umount /home; echo $?; umount -l /; echo $?; "
             "mount -o remount,rw /; echo $?; unshare -U true; echo $?")
    out["walls"] = sb.exec(["sh", "-c", walls]).stdout.decode().split()
    out["timeout"] = sb.exec(["sleep", "30"], timeout=0.3).timed_out
    address = sb.tunnel(8000)
    got = b""
    for _ in range(200):
        c = socket.create_connection(address); got = c.recv(10); c.close()
        if got:
            break
        time.sleep(0.05)
    out["tunnel"] = got.decode()
    out["ports"] = sorted(sb.listening_ports())  # read from the host, no tool inside
    helper = os.path.join(os.path.dirname(sys.argv[1]), "helper.py")
    with open(helper, "w") as f:
        f.write("import os\\ndef main(args):\\n    open('/w/from-helper', 'w').close()\\n"
                "    print(sorted(os.listdir('/w')))\\n    return 0\\n")
    import subprocess
    argv, fds = sb.helper_command(helper)  # joins the user namespace first
    done = subprocess.run(argv, pass_fds=list(fds.values()), capture_output=True, text=True)
    for fd in fds.values():
        os.close(fd)
    out["helper"] = [done.returncode, done.stdout.strip(), done.stderr.strip()]
    sb.terminate(wait=True)
    out["status"] = sb.poll().kind
    rt.close()
    print(json.dumps(out))
""")


@pytest.fixture
def shared_state(runtime_available: None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pms-rt-nonroot-"))
    path.chmod(0o777)
    try:
        yield path / "state"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_everything_works_without_root(shared_state: Path) -> None:
    from runtime_helpers import processes_mentioning

    python = _python_for_nobody()
    if python is None:
        pytest.skip("nobody cannot run a Python of this version that imports this checkout")
    proc = _as_nobody(python, SCRIPT, str(shared_state), home=shared_state.parent)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {
        "uid": NOBODY,
        "exec": [0, "0\n/w\nf\n"],
        "host_write": 2,
        "walls": ["/home:", "/root:", "32", "32", "32", "1"],
        "timeout": True,
        "tunnel": "hi",
        "ports": [8000],
        "helper": [0, "['f', 'from-helper']", ""],
        "status": "terminated",
    }
    assert processes_mentioning(str(shared_state)) == []


EGRESS_SCRIPT = textwrap.dedent("""
    import sys
    from pytest_modal_sandbox.runtime import LocalRuntime, RuntimeUnavailable, SandboxConfig
    rt = LocalRuntime(sys.argv[1])
    try:
        sb = rt.create(SandboxConfig())
    except RuntimeUnavailable as exc:
        print("refused:", exc)
    else:
        print("eth0:" in sb.exec(["cat", "/proc/net/dev"]).stdout.decode())
        sb.terminate(wait=True)
""")


def test_egress_without_root_or_a_clear_refusal(shared_state: Path) -> None:
    """Not as root, slirp4netns needs /dev/net/tun open to the user: a network, or the fix."""
    python = _python_for_nobody()
    if python is None:
        pytest.skip("nobody cannot run a Python of this version that imports this checkout")
    proc = _as_nobody(python, EGRESS_SCRIPT, str(shared_state), home=shared_state.parent)
    assert proc.returncode == 0, proc.stderr
    if _as_nobody(python, "open('/dev/net/tun', 'rb+')", home=Path("/")).returncode == 0:
        assert proc.stdout.strip() == "True"
    else:
        assert "refused: /dev/net/tun is not open to this user" in proc.stdout
        assert "chmod 0666 /dev/net/tun" in proc.stdout


ROOTFS_SCRIPT = textwrap.dedent("""
    import json, sys
    from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
    rt = LocalRuntime(sys.argv[1])
    sb = rt.create(SandboxConfig(rootfs=sys.argv[2], workdir="/app", block_network=True))
    r = sb.exec(["sh", "-c", "id -u; cat data.txt; echo w > /etc/w && cat /etc/w; ls /usr"])
    out = {"mode": sb._meta["rootfs_mode"], "exec": [r.returncode, r.stdout.decode()]}
    sb.terminate(wait=True)
    out["status"] = sb.poll().kind
    print(json.dumps(out))
""")


@pytest.mark.parametrize(("owner", "mode"), [(0, "copy"), (NOBODY, "overlay")])
def test_image_root_without_root(shared_state: Path, owner: int, mode: str) -> None:
    """An image root of our own is overlaid in a user namespace; one owned by someone else
    (root here) is copied, since its files could not be written inside."""
    from test_runtime_rootfs import BUSYBOX, build_busybox_root, snapshot

    python = _python_for_nobody()
    if python is None or BUSYBOX is None:
        pytest.skip("no Python of this version that nobody can run, or no busybox")
    image = build_busybox_root(shared_state.parent / "image")
    _chown_tree(image, owner)
    before = snapshot(image)
    proc = _as_nobody(
        python, ROOTFS_SCRIPT, str(shared_state), str(image), home=shared_state.parent
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"mode": mode, "exec": [1, "0\nfrom the image\nw\n"], "status": "terminated"}
    assert snapshot(image) == before
    assert sorted(p.name for p in shared_state.iterdir() if p.name.startswith("sb-")) != []
    for sandbox_dir in shared_state.glob("sb-*"):
        for leftover in ("root", "upper", "ovl-work"):
            assert not (sandbox_dir / leftover).exists(), leftover


BUILD_SCRIPT = textwrap.dedent("""
    import json, sys
    from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig
    rt = LocalRuntime(sys.argv[1])
    sb = rt.create(SandboxConfig(command=["sh", "-c", "echo built > /built; id -u"],
                                 rootfs=sys.argv[2], rootfs_writable=True, network=True))
    status = sb.wait(60)
    print(json.dumps({"status": status.kind, "out": open(sb.stdout_path).read()}))
""")


def test_build_mode_without_root(shared_state: Path) -> None:
    """An image build as an unprivileged user: its own copy of a root, changed in place."""
    from test_runtime_rootfs import BUSYBOX, build_busybox_root

    python = _python_for_nobody()
    if python is None or BUSYBOX is None:
        pytest.skip("no Python of this version that nobody can run, or no busybox")
    image = build_busybox_root(shared_state.parent / "build")
    _chown_tree(image, NOBODY)
    proc = _as_nobody(python, BUILD_SCRIPT, str(shared_state), str(image), home=shared_state.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": "success", "out": "0\n"}
    assert (image / "built").read_text() == "built\n"
    assert (image / "built").stat().st_uid == NOBODY  # root inside is the user outside
