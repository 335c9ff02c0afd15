"""The keeper server only starts keepers: killing it ends no sandbox, and it is replaced; its
spare keeper serves sandboxes of every profile and ends with its creator."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from runtime_helpers import run_python, spawn_python

from proctable import children_of
from pytest_modal_sandbox.runtime import LocalRuntime, LocalSandbox, SandboxConfig, userns


def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def test_killing_the_keeper_server_ends_no_sandbox(rt: LocalRuntime, state_dir: Path) -> None:
    sb = rt.create(SandboxConfig(block_network=True))
    server = _parent(sb._keeper.pid)
    assert server != os.getpid()
    title = Path(f"/proc/{sb._keeper.pid}/cmdline").read_bytes()
    assert title.startswith(f"pms-keeper {state_dir}/{sb.id}/".encode())  # ps shows whose
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _parent(sb._keeper.pid) == server and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sb.exec(["true"]).returncode == 0 and sb.poll() is None
    other = rt.create(SandboxConfig(block_network=True))  # a new server starts it
    assert _parent(other._keeper.pid) not in (server, os.getpid())
    sb.terminate(wait=True)
    assert sb.poll() is not None and sb.poll().kind == "terminated"  # type: ignore[union-attr]


def _route_destinations(sb: LocalSandbox) -> set[str]:
    """The destinations (hex, as the kernel prints them) of the sandbox's main routing table."""
    table = sb.exec(["cat", "/proc/net/route"]).stdout.decode()
    return {line.split()[1] for line in table.splitlines()[1:]}


ON_LINK, DEFAULT, TEN_ONE = "0002000A", "00000000", "0000010A"  # 10.0.2.0/24, 0/0, 10.1.0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="walls are made ahead as root only")
def test_the_spare_keeper_serves_every_profile(rt: LocalRuntime) -> None:
    """The server keeps a spare keeper for each profile (here with egress, and without) that
    has made its walls before the sandbox is asked for.  Each sandbox gets exactly its
    network, whatever came before it, and only a spare's slirp4netns outlives the sandboxes."""
    default = (SandboxConfig(), {ON_LINK, DEFAULT})
    blocked = (SandboxConfig(block_network=True), set())
    allowed = (SandboxConfig(cidr_allowlist=["10.1.0.0/16"]), {ON_LINK, TEN_ONE})
    for config, routes in [default, blocked, default, default, allowed, allowed, blocked, default]:
        sb = rt.create(config)
        assert _route_destinations(sb) == routes, config
        assert sb.exec(["sh", "-c", "cat /proc/self/uid_map"]).stdout.split() == [
            b"0",
            b"0",
            b"4294967295",
        ]
        server = _parent(sb._keeper.pid)
        sb.terminate(wait=True)
    spares = [pid for pid in children_of(server) if _title(pid) == "pms-keeper (spare)"]
    assert len(spares) == 2
    left = [pid for pid in _descendants(server) if _title(pid).endswith("slirp4netns")]
    assert len(left) == 1 and _parent(left[0]) in spares


@pytest.mark.skipif(os.geteuid() != 0, reason="walls are made ahead as root only")
@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_the_spare_keeper_ends_with_its_creator(state_dir: Path, ending: str) -> None:
    """A creating process that exits, or is killed, leaves no spare behind: not the keepers
    (one per profile: each must see the server go, though the other was forked after it), not
    their slirp4netns, not their launchers."""
    code = (
        "import json, os, sys, time\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from proctable import children_of\n"
        "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "rt = LocalRuntime(sys.argv[1])\n"
        "for config in [SandboxConfig(), SandboxConfig(block_network=True)]:\n"
        "    sb = rt.create(config)\n"
        "    stat = open(f'/proc/{sb._keeper.pid}/stat').read()\n"
        "    server = int(stat.rsplit(')', 1)[1].split()[1])\n"
        "    sb.terminate(wait=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:  # until the spares have made their walls\n"
        "    spares = children_of(server)\n"
        "    pids = spares + [c for p in spares for c in children_of(p)]\n"
        "    if len(pids) == 5:\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "print(json.dumps(pids), flush=True)\n"
        "if sys.argv[3] == 'SIGKILL':\n"
        "    time.sleep(60)\n"
    )
    proc = spawn_python(code, str(state_dir), str(Path(__file__).parents[1]), ending)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if ending == "SIGKILL":
        proc.kill()
    proc.wait(60)
    assert line, proc.stderr.read() if proc.stderr else ""
    pids = json.loads(line)
    assert len(pids) == 5  # two spares, two bwrap launchers, one slirp4netns
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in pids if _alive(pid)]


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = children_of(todo.pop())
        found += children
        todo += children
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="walls are made ahead as root only")
def test_a_spare_sees_what_the_host_mounts_after_it_was_made(state_dir: Path) -> None:
    """The spare's mount namespace follows the host's: a file system mounted on the host after
    the spare was made shows in its sandbox, as it would in one made at that moment.  (The
    creator runs in a mount namespace of its own, its "host": a mount on the real host would
    make every other test's spares stale while it lasts.)"""
    code = (
        "import os, subprocess, sys, time\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from proctable import children_of\n"
        "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig, linux\n"
        "linux.unshare(linux.CLONE_NEWNS)\n"
        "linux.mount('none', '/', None, linux.MS_REC | linux.MS_PRIVATE, None)\n"
        "rt = LocalRuntime(sys.argv[1])\n"
        "first = rt.create(SandboxConfig())\n"
        "stat = open(f'/proc/{first._keeper.pid}/stat').read()\n"
        "server = int(stat.rsplit(')', 1)[1].split()[1])\n"
        "first.terminate(wait=True)\n"
        "deadline = time.monotonic() + 60\n"
        "def made(pid):  # a spare that has made its walls: slirp4netns and the launcher\n"
        "    title = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[0]\n"
        "    return title == b'pms-keeper (spare)' and len(children_of(pid)) == 2\n"
        "while not any(made(pid) for pid in children_of(server)):\n"
        "    assert time.monotonic() < deadline, 'no spare made its walls'\n"
        "    time.sleep(0.02)\n"
        "point = f'/srv/pms-test-{os.getpid()}'  # not below a hidden path (/tmp is one)\n"
        "os.makedirs(point)\n"
        "try:\n"
        "    subprocess.run(['mount', '-t', 'tmpfs', 'tmpfs', point], check=True)\n"
        "    with open(f'{point}/hello', 'w') as f:\n"
        '        f.write("from the host\'s new mount")\n'
        "    sb = rt.create(SandboxConfig())\n"
        "    print(sb.exec(['cat', f'{point}/hello']).stdout.decode())\n"
        "    sb.terminate(wait=True)\n"
        "finally:\n"
        "    subprocess.run(['umount', '-l', point])\n"
        "    os.rmdir(point)\n"
        "rt.close()\n"
    )
    done = run_python(code, str(state_dir), str(Path(__file__).parents[1]), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the host's new mount\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="the bwrap launcher is root's")
def test_a_launcher_that_cannot_make_its_namespaces_says_why(state_dir: Path) -> None:
    """userns.Launcher waits until its process is in U1 with U2 made, and raises with the
    reason when it cannot be (here: a user namespace that allows none below it)."""
    code = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import linux, userns\n"
        "linux.unshare(linux.CLONE_NEWUSER)\n"
        "userns._write_maps('self', '0 0 1', '0 0 1', deny=True)\n"
        "userns.set_limits({'user': 0})\n"
        "try:\n"
        "    userns.Launcher()\n"
        "except OSError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = run_python(code, str(Path(userns.__file__).parent))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: "), done.stdout
    assert "No space left on device" in done.stdout  # what unshare(CLONE_NEWUSER) said


def test_a_creating_process_ends_its_server_as_it_exits(state_dir: Path) -> None:
    """At exit, not in the garbage collector at shutdown, which warned of an unclosed socket
    and of a server process still running (at the end of every full run of the suite)."""
    code = (
        "import atexit, os, sys\n"
        "from pathlib import Path\n"
        "from pytest_modal_sandbox.runtime import LocalRuntime, SandboxConfig\n"
        "rt = LocalRuntime(sys.argv[1])\n"
        "sb = rt.create(SandboxConfig(block_network=True))\n"
        "stat = Path(f'/proc/{sb._keeper.pid}/stat').read_text()\n"
        "server = int(stat.rsplit(')', 1)[1].split()[1])\n"
        "sb.terminate(wait=True)\n"
        "rt.close()\n"
        "atexit._run_exitfuncs()  # what the interpreter runs first as it exits\n"
        "print('server gone' if not os.path.exists(f'/proc/{server}') else 'server runs')\n"
    )
    done = run_python(code, str(state_dir), env={"PYTHONWARNINGS": "always"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "server gone\n"
    assert "ResourceWarning" not in done.stderr, done.stderr
