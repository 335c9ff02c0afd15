"""The walls of a local sandbox, tried from inside as root - the user CI runs as.

Each escape of issue 11 is attempted through ``exec`` and, where it matters, from the
sandbox's own process tree (its entrypoint), and each test checks the host afterwards: the
attempt must fail *and* leave nothing changed.  The non-root side is in
``test_runtime_nonroot.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import SANDBOX_PYTHON

from hostchanges import host_changes
from pytest_modal_sandbox.runtime import LocalRuntime, LocalSandbox, SandboxConfig
from pytest_modal_sandbox.runtime.config import ExecOutcome

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the walls as root (CI runs as root); not as root: nonroot tests"
)

PY = SANDBOX_PYTHON
# syscall(2) from Python inside: prints the errno's name of a failed call, "ok" otherwise.
SYSCALL = (
    "import ctypes, errno, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "args = [int(a) if a.lstrip('-').isdigit() else a.encode() for a in sys.argv[2:]]\n"
    "r = libc.syscall(int(sys.argv[1]), *args)\n"
    "print('ok' if r != -1 else errno.errorcode[ctypes.get_errno()])\n"
)
NR = {  # x86-64, aarch64
    "x86_64": {"mount": 165, "init_module": 175, "finit_module": 313, "delete_module": 176,
               "ptrace": 101, "unshare": 272, "keyctl": 250, "pidfd_open": 434},
    "aarch64": {"mount": 40, "init_module": 105, "finit_module": 273, "delete_module": 106,
                "ptrace": 117, "unshare": 97, "keyctl": 219, "pidfd_open": 434},
}.get(os.uname().machine)  # fmt: skip


def sh(sb: LocalSandbox, script: str, **kwargs: object) -> ExecOutcome:
    return sb.exec(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]


def syscall(sb: LocalSandbox, name: str, *args: object) -> str:
    if NR is None:
        pytest.skip(f"no syscall numbers for {os.uname().machine}")
    out = sb.exec([PY, "-c", SYSCALL, str(NR[name]), *map(str, args)])
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().strip()


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory on the host that host-image sandboxes see (not under /tmp or a home)."""
    path = Path(tempfile.mkdtemp(prefix="pms-walls-", dir="/"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def entrypoint_result(sb: LocalSandbox, path: str) -> str:
    """What the entrypoint wrote into ``path`` (it runs before the sandbox reports ready, but
    may not have finished: callers write elsewhere and rename, or end with one line)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = sb.exec(["cat", path])
        if out.returncode == 0 and out.stdout.endswith(b"\n"):
            return out.stdout.decode()
        time.sleep(0.05)
    raise AssertionError(f"the entrypoint never wrote {path}")


# -- the file system ----------------------------------------------------------------------------


def test_remount_and_write_host_files(rt: LocalRuntime, host_dir: Path) -> None:
    target = host_dir / "file"
    target.write_text("original")
    attempt = (
        "mount -o remount,rw / ; echo remount=$?; mount -o remount,rw,bind / ; echo bind=$?; "
        f"echo changed > {target} ; cat {target}"
    )
    sb = rt.create(
        SandboxConfig(
            command=["sh", "-c", f"({attempt}) > /pid1.part 2>&1; mv /pid1.part /pid1; sleep 600"]
        )
    )
    out = sh(sb, attempt)
    assert b"remount=32" in out.stdout and b"bind=32" in out.stdout  # mount(8): failure
    assert out.stdout.endswith(b"changed\n")  # the sandbox's own copy of the file
    assert syscall(sb, "mount", "none", "/", "none", 0x20 | 0x1000, 0) == "EPERM"
    pid1 = entrypoint_result(sb, "/pid1")
    assert "remount=32" in pid1 and "bind=32" in pid1
    assert target.read_text() == "original"
    sb.terminate(wait=True)
    assert target.read_text() == "original"
    assert sorted(os.listdir(host_dir)) == ["file"]


def test_block_devices_and_mounts(rt: LocalRuntime) -> None:
    with open("/proc/self/mountinfo") as f:
        root_dev = next(line.split()[2] for line in f if line.split()[4] == "/")
    major, minor = root_dev.split(":")
    attempt = (
        f"mknod /tmp/disk b {major} {minor}; echo mknod=$?; "
        "mount -t ext4 /tmp/disk /mnt; echo ext4=$?; "
        "mount -t tmpfs none /etc; echo tmpfs=$?; "
        "mount -t proc proc /mnt; echo proc=$?; "
        "mount -t sysfs sysfs /sys; echo sysfs=$?; "
        "mount --bind / /mnt; echo bind=$?; "
        "ls /dev"
    )
    sb = rt.create(
        SandboxConfig(
            command=["sh", "-c", f"({attempt}) > /pid1.part 2>&1; mv /pid1.part /pid1; sleep 600"]
        )
    )
    for text in (sh(sb, attempt).stdout.decode(), entrypoint_result(sb, "/pid1")):
        lines = dict(line.split("=") for line in text.splitlines() if "=" in line)
        assert lines == {k: lines[k] for k in ("mknod", "ext4", "tmpfs", "proc", "sysfs", "bind")}
        assert all(code != "0" for code in lines.values()), lines
        assert "vda" not in text and "sda" not in text and "nvme" not in text  # no disks
    assert sh(sb, "ls /etc/hostname").returncode == 0  # /etc is not covered


def test_kernel_modules_proc_sys_and_sys(rt: LocalRuntime) -> None:
    """(The sysctls are written with the host's own values: were a wall missing, the test
    would fail without changing the host.)"""
    knobs = {k: Path(f"/proc/sys/{k}").read_text() for k in ("kernel/panic", "vm/swappiness")}
    sb = rt.create(SandboxConfig())
    assert syscall(sb, "finit_module", 0, "", 0) == "EPERM"
    assert syscall(sb, "init_module", 0, 0, "") == "EPERM"
    assert syscall(sb, "delete_module", "pms_walls_none", 0) == "EPERM"
    if os.path.exists("/sbin/modprobe") or os.path.exists("/usr/sbin/modprobe"):
        assert sh(sb, "modprobe pms_walls_none").returncode != 0
    for knob, value in [*knobs.items(), ("net/ipv4/ip_forward", "0\n")]:
        out = sh(sb, f"printf '{value}' > /proc/sys/{knob}")
        assert out.returncode != 0 and b"Read-only file system" in out.stderr, knob
    if os.path.exists("/proc/sysrq-trigger"):
        assert sh(sb, "echo h > /proc/sysrq-trigger").returncode != 0
    assert sh(sb, "cat /proc/timer_list").stdout == b""  # masked
    assert sh(sb, "ls -A /sys").stdout == b""  # no sysfs at all
    out = sh(sb, "echo always > /sys/kernel/mm/transparent_hugepage/enabled")
    assert out.returncode != 0
    assert {k: Path(f"/proc/sys/{k}").read_text() for k in knobs} == knobs


def test_nested_user_namespaces_reopen_nothing(rt: LocalRuntime) -> None:
    marker = f"/etc/pms-nested-{uuid.uuid4().hex}"
    sb = rt.create(SandboxConfig())
    for attempt in (
        f"unshare -Urm sh -c 'mount -o remount,rw / && echo x > {marker}'",
        "unshare -U true",
        "unshare -m true",
        "unshare -n true",
    ):
        out = sh(sb, attempt)
        assert out.returncode != 0, (attempt, out)
    assert syscall(sb, "unshare", 0x10000000) == "EPERM"  # CLONE_NEWUSER
    fork = "import os; pid = os.fork(); os._exit(0) if pid == 0 else os.waitpid(pid, 0)"
    assert sb.exec([PY, "-c", fork]).returncode == 0  # a plain fork stays allowed
    assert not os.path.exists(marker)


# -- processes, network, keys ---------------------------------------------------------------------


def test_host_processes_are_invisible_and_untouchable(rt: LocalRuntime) -> None:
    host = subprocess.Popen(["sleep", "600"])
    try:
        sb = rt.create(SandboxConfig())
        listing = sh(sb, "ls /proc").stdout.split()
        assert str(host.pid).encode() not in listing
        assert len([p for p in listing if p.isdigit()]) < 10
        assert sh(sb, f"kill -9 {host.pid}").returncode != 0
        assert syscall(sb, "ptrace", 16, host.pid, 0, 0) == "ESRCH"  # PTRACE_ATTACH
        assert syscall(sb, "pidfd_open", host.pid, 0) == "ESRCH"
        assert (
            sh(sb, "readlink /proc/1/root; ls /proc/1/root/").stdout.split()
            == sh(sb, "echo /; ls /").stdout.split()
        )
        assert host.poll() is None
        with open(f"/proc/{host.pid}/status") as f:
            assert "TracerPid:\t0\n" in f.read()
    finally:
        host.kill()
        host.wait()


def _lo() -> tuple[str, str, str]:
    """The host's links (flags, mtu), addresses and routes (no lifetimes: they tick)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return run("ip", "-o", "link", "show"), run("ip", "-br", "addr"), run("ip", "route")


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_host_network_stays_unchanged(rt: LocalRuntime) -> None:
    """A build sandbox shares the host's network namespace: it must not change it.  (Only
    changes that are harmless and undone here are tried: were a wall missing, bringing the
    host's ``lo`` down would break this machine.)"""
    before = _lo()
    sb = rt.create(SandboxConfig(network=True))
    try:
        for attempt in (
            "ip addr add 10.234.5.6/32 dev lo",
            "ip route add 10.234.7.0/24 dev lo",
            "ip link add pmswalls0 type dummy",
            "ip link set lo mtu 65535",
        ):
            out = sh(sb, attempt)
            assert out.returncode != 0, (attempt, out)
        assert _lo() == before
    finally:
        for undo in (
            ["ip", "addr", "del", "10.234.5.6/32", "dev", "lo"],
            ["ip", "route", "del", "10.234.7.0/24"],
            ["ip", "link", "del", "pmswalls0"],
        ):
            subprocess.run(undo, capture_output=True)
    assert "lo: <LOOPBACK,UP" in before[0] and "10.234." not in before[1] + before[2]
    own = rt.create(SandboxConfig())  # nor its own namespaces, which its user ns does not own
    assert sh(own, "ip link set lo down").returncode != 0
    assert sh(own, "hostname other").returncode != 0


def test_keyrings_are_not_shared(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())
    assert syscall(sb, "keyctl", 0, -3, 0) == "EPERM"  # KEYCTL_GET_KEYRING_ID @s


# -- privilege: the exec and the entrypoint are alike, and root inside can be root ---------------


def _creds(text: str) -> dict[str, str]:
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid")
    return {
        k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines()) if k in keys
    }


def test_an_exec_has_no_more_privilege_than_the_entrypoint(rt: LocalRuntime) -> None:
    sb = rt.create(SandboxConfig())  # the entrypoint (a sleep) is PID 2, bwrap's init PID 1
    entry = _creds(sh(sb, "cat /proc/2/status").stdout.decode())
    mine = _creds(sh(sb, "cat /proc/self/status").stdout.decode())
    assert mine == entry
    assert entry["NoNewPrivs"] == "1" and entry["Seccomp"] == "2" and entry["Uid"].startswith("0")
    same = "readlink /proc/2/ns/user /proc/self/ns/user; cat /proc/2/uid_map /proc/self/uid_map"
    links = sh(sb, same).stdout.decode().split("\n")
    assert links[0] == links[1] and links[2] == links[3] == "         0          0 4294967295"
    proc = sb.popen(["cat", "/proc/self/status"], stdin=subprocess.DEVNULL)
    assert _creds(proc.communicate()[0].decode()) == entry
    host = _creds(Path("/proc/self/status").read_text())
    assert host["NoNewPrivs"] == "0" and host["Seccomp"] == "0"  # this thread: untouched


def test_a_daemon_switches_to_its_own_user(rt: LocalRuntime) -> None:
    daemon = (
        "import os, time\n"
        "os.setgroups([4243]); os.setgid(4242); os.setuid(4242)\n"
        "open('/tmp/daemon', 'w').write(f'{os.getuid()} {os.getgid()} {os.getgroups()}\\n')\n"
        "time.sleep(600)\n"
    )
    sb = rt.create(SandboxConfig(command=[PY, "-c", daemon]))
    assert entrypoint_result(sb, "/tmp/daemon") == "4242 4242 [4243]\n"
    assert sh(sb, "stat -c %u:%g /tmp/daemon").stdout == b"4242:4242\n"
    out = sh(sb, "touch /srv/f && chown 1234:5678 /srv/f && stat -c %u:%g /srv/f")
    assert out.stdout == b"1234:5678\n"
    if shutil.which("setpriv"):
        out = sh(sb, "setpriv --reuid 999 --regid 999 --clear-groups id -u")
        assert out.stdout == b"999\n"


# -- host-image mode: a writable root of its own, the system without the user ----------------------


def test_host_image_root_is_writable_and_private(rt: LocalRuntime) -> None:
    tag = uuid.uuid4().hex
    paths = [f"/srv/pms-{tag}", f"/usr/local/pms-{tag}", f"/etc/pms-{tag}", f"/tmp/pms-{tag}",
             f"/var/tmp/pms-{tag}", f"/opt/pms-{tag}/deep/file", f"/app/pms-{tag}"]  # fmt: skip
    sb = rt.create(SandboxConfig(workdir="/app"))
    for path in paths:
        out = sh(sb, f"mkdir -p $(dirname {path}) && echo {tag} > {path} && cat {path}")
        assert out.stdout == f"{tag}\n".encode(), (path, out)
    assert sh(sb, "pwd; ls").stdout == f"/app\npms-{tag}\n".encode()  # a fresh workdir
    for path in paths:
        assert not os.path.exists(path), path
    assert not os.path.exists("/app")
    state = sb.state_dir
    sb.terminate(wait=True)
    for path in paths:
        assert not os.path.exists(path), path
    assert [p.name for p in state.iterdir() if p.is_dir()] == []  # the root and its layers gone


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch, host_dir: Path) -> Iterator[list[str]]:
    """Credential files on the host where a sandbox must not see them (removed afterwards);
    only what did not exist is created.  Other tests' sandboxes' views change meanwhile
    (``tests/hostchanges.py``)."""
    made: list[Path] = []

    def make(path: Path, text: str = "secret\n") -> str:
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                made.append(parent)
                if parent != path:
                    parent.mkdir()
        path.write_text(text)
        return str(path)

    with host_changes(exclusive=True):
        try:
            home = Path.home()
            files = [
                make(home / ".modal.toml") if not (home / ".modal.toml").exists() else "",
                make(home / ".ssh/id_ed25519") if not (home / ".ssh/id_ed25519").exists() else "",
                make(home / f".pms-walls-{uuid.uuid4().hex}"),
                make(Path(f"/home/pms-walls-{uuid.uuid4().hex[:8]}/.aws/credentials")),
                make(Path(f"/var/lib/docker/pms-walls-{uuid.uuid4().hex}")),
                make(host_dir / "aws-credentials"),
            ]
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(host_dir / "aws-credentials"))
            if os.path.isdir("/etc/ssh"):
                files.append(make(Path(f"/etc/ssh/ssh_host_pms{uuid.uuid4().hex[:6]}_key")))
            yield [f for f in files if f]
        finally:
            for path in reversed(made):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def test_host_image_mode_hides_homes_and_credentials(
    rt: LocalRuntime, fake_credentials: list[str]
) -> None:
    sb = rt.create(SandboxConfig())
    assert sh(sb, "ls -A /root /home /run").stdout.split() == [b"/home:", b"/root:", b"/run:"]
    assert sh(sb, f"ls -A {Path.home()}").stdout == b""
    for path in fake_credentials:
        out = sh(sb, f"cat {path}")
        assert out.returncode != 0 and b"secret" not in out.stdout, path
    shadow = sh(sb, "cat /etc/shadow").stdout.decode()
    assert shadow.startswith("root:*:") and "$" not in shadow  # kept, with no password hashes
    state = sh(sb, f"ls -A {rt.root}")
    assert state.returncode != 0 or state.stdout == b""  # other sandboxes' files: not there
    assert sh(sb, "cat /etc/passwd").returncode == 0  # the system itself is there


# -- escapes through paths: the workdir, /proc/self/root, symlinks ------------------------------


def test_paths_lead_nowhere_outside(rt: LocalRuntime, host_dir: Path) -> None:
    target = host_dir / "target"
    target.write_text("original")
    sb = rt.create(SandboxConfig(workdir="/work"))
    steps = (
        f"ln -s {target} /work/link && echo changed > /work/link; "
        f"echo changed > /proc/self/root{target}; echo changed > /proc/1/root{target}; "
        f"ln -s {host_dir} /work/dir && echo new > /work/dir/new; "
        "cd /proc/self/root/../../.. && pwd"
    )
    assert sh(sb, steps).stdout == b"/\n"
    assert sh(sb, f"cat {target}").stdout == b"changed\n"
    # host side: an exec's workdir is resolved inside the sandbox's root
    assert sb.exec(["pwd", "-P"], workdir="/work/dir").stdout == f"{host_dir}\n".encode()
    assert sb.exec(["ls"], workdir="/work/dir").stdout.split() == [b"new", b"target"]
    assert target.read_text() == "original"
    sb.terminate(wait=True)
    assert target.read_text() == "original"
    assert sorted(os.listdir(host_dir)) == ["target"]


def test_an_image_root_is_confined_as_well(rt: LocalRuntime, tmp_path: Path) -> None:
    from runtime_helpers import BUSYBOX, build_busybox_root

    if BUSYBOX is None:
        pytest.skip("needs busybox")
    image = build_busybox_root(tmp_path / "image")
    sb = rt.create(SandboxConfig(rootfs=str(image)))
    out = sh(sb, "mount -o remount,rw /; echo $?; unshare -U true; echo $?; ls -A /sys")
    assert out.stdout.split()[:2] != [b"0", b"0"] and b"0" not in out.stdout.split()
    assert sh(sb, "echo 1 > /proc/sys/kernel/panic").returncode != 0
    assert sh(sb, "cat /proc/self/uid_map").stdout == b"         0          0 4294967295\n"
    build = rt.create(
        SandboxConfig(
            command=["sh", "-c", "chown 7:8 /app/data.txt; mount -t tmpfs x /mnt; echo $?"],
            rootfs=str(image),
            rootfs_writable=True,
            network=True,
        )
    )
    assert build.wait(30) is not None
    assert build.stdout_path.read_text().split()[-1] != "0"  # the mount failed
    assert (image / "app" / "data.txt").stat().st_uid == 7  # root inside could chown
