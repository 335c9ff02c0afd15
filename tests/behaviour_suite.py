"""The backend-neutral behaviour suite: one test file, run by an inner pytest with
``--modal-sandbox=<backend>``.

Each inner test asserts one behaviour of the handle, the daemons or the fixtures, so "works
locally", "works on the Modal path" and "works on Modal" are the same check: it runs on every
offline backend (``tests/plugin/test_behaviour.py``) and on a real Modal workspace
(``tests/live``).  A uniquely named module in ``tests/`` (on ``sys.path``).
"""

from __future__ import annotations

SUITE = r"""
import socket
import time
import urllib.request

import pytest

from pytest_modal_sandbox import (
    Daemon, ExecError, ExecTimeout, NotDeclaredError, Probe, SandboxGone, SandboxSpec,
    sandbox_fixture,
)

pytestmark = pytest.mark.sandbox(timeout=120, env={"FROM_MODULE": "module"})


def serve(port, text):
    return (
        f"mkdir -p /tmp/www{port} && printf %s {text} > /tmp/www{port}/index.html && "
        f"exec python3 -m http.server {port} --directory /tmp/www{port}"
    )


# -- exec ------------------------------------------------------------------------------------

def test_exec_text_bytes_stdin_env_workdir(sandbox):
    res = sandbox.exec("echo", "hi")
    assert (res.returncode, res.stdout, res.stderr) == (0, "hi\n", "")
    raw = sandbox.exec("printf", r"\377\000", text=False)
    assert raw.stdout == b"\xff\x00"
    assert sandbox.exec("printf", r"\377").stdout == "\ufffd"  # replacement, no crash
    assert sandbox.exec("cat", stdin="from stdin").stdout == "from stdin"
    assert sandbox.exec("cat", stdin=b"\x00\x01", text=False).stdout == b"\x00\x01"
    assert sandbox.exec("sh", "-c", "echo $FOO", env={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.exec("pwd", workdir="/tmp").stdout == "/tmp\n"
    assert sandbox.exec("sh", "-c", "echo $FROM_MODULE").stdout == "module\n"


def test_exec_exit_codes(sandbox):
    assert sandbox.exec("sh", "-c", "exit 3").returncode == 3
    assert sandbox.exec("no-such-binary-xyz").returncode == 127
    assert sandbox.exec("sh", "-c", "kill -9 $$").returncode == 137
    assert sandbox.exec("sh", "-c", "kill -15 $$").returncode == 143


def test_exec_check_shows_output_tail(sandbox):
    res = sandbox.exec("sh", "-c", "echo out-line; echo err-line >&2; exit 4")
    with pytest.raises(ExecError) as info:
        res.check()
    text = str(info.value)
    assert "exited with 4" in text and "out-line" in text and "err-line" in text
    assert sandbox.exec("true").check().ok


def test_exec_timeout_kills_the_command(sandbox):
    t0 = time.monotonic()
    with pytest.raises(ExecTimeout) as info:
        sandbox.exec("sh", "-c", "echo started; sleep 30", timeout=2)
    assert time.monotonic() - t0 < 25
    assert isinstance(info.value, TimeoutError)


# -- files and isolation -----------------------------------------------------------------------

@pytest.mark.sandbox(workdir="/srv/app")
def test_files_and_writable_paths(sandbox):
    sandbox.write_file("/tmp/a/b.txt", "text")
    assert sandbox.read_file("/tmp/a/b.txt") == b"text"
    sandbox.write_file("/srv/app/data.bin", b"\x00\xff")
    assert sandbox.read_file("/srv/app/data.bin") == b"\x00\xff"
    assert sandbox.exec("pwd").stdout == "/srv/app\n"
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/tmp/missing")


# -- ports -------------------------------------------------------------------------------------

@pytest.mark.sandbox(
    daemons=[
        Daemon("enc", serve(8000, "encrypted"), ready=Probe.http(8000)),
        Daemon("plain", serve(8001, "plain"), ready=Probe.tcp(8001)),
        Daemon("h2", serve(8002, "h2"), ready=Probe.tcp(8002)),
    ],
    encrypted_ports=[8000],
    unencrypted_ports=[8001],
    h2_ports=[8002],
)
def test_ports_urls_and_tcp(sandbox):
    assert urllib.request.urlopen(sandbox.url(8000)).read() == b"encrypted"
    assert urllib.request.urlopen(sandbox.url(8001)).read() == b"plain"
    host, port = sandbox.tcp(8001)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"plain" in s.recv(65536) + s.recv(65536)
    assert set(sandbox.tunnels) == {8000, 8001, 8002}
    assert sandbox.tunnels[8002].kind == "h2_ports"
    with pytest.raises(NotDeclaredError, match="port 9999 is not declared"):
        sandbox.url(9999)


def same_port(name):
    return sandbox_fixture(
        name=name,
        daemons=[Daemon("web", serve(8000, name), ready=Probe.http(8000))],
        encrypted_ports=[8000],
    )


one, two, three, four = (same_port(n) for n in ("one", "two", "three", "four"))


def test_four_sandboxes_listen_on_the_same_port(one, two, three, four):
    boxes = {"one": one, "two": two, "three": three, "four": four}
    assert len({b.id for b in boxes.values()}) == 4
    for name, box in boxes.items():
        assert urllib.request.urlopen(box.url(8000)).read() == name.encode()


# -- the network -----------------------------------------------------------------------------

FETCH = (
    "import os, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(os.environ['URL'], timeout=10).read().decode())\n"
    "except OSError as e:\n"
    "    print('unreachable')\n"
)

peer_db = sandbox_fixture(
    daemons=[Daemon("db", serve(8001, "from-db"), ready=Probe.http(8001))],
    unencrypted_ports=[8001],
)


def test_a_sandbox_reaches_another_through_peer(sandbox, peer_db):
    host, port = peer_db.peer(8001)
    assert host not in ("127.0.0.1", "localhost", "::1")
    url = peer_db.peer_url(8001)
    assert url.startswith("http") and f":{port}" in url
    assert sandbox.exec("python3", "-c", FETCH, env={"URL": url}).stdout == "from-db\n"
    with pytest.raises(NotDeclaredError, match="port 9999 is not declared"):
        peer_db.peer(9999)


@pytest.mark.sandbox(block_network=True)
def test_block_network_reaches_nothing(sandbox, peer_db):
    url = peer_db.peer_url(8001)
    assert sandbox.exec("python3", "-c", FETCH, env={"URL": url}).stdout == "unreachable\n"


@pytest.mark.sandbox(cidr_allowlist=["198.51.100.0/24"])  # TEST-NET-2: not the peer
def test_cidr_allowlist_reaches_only_its_networks(sandbox, peer_db):
    url = peer_db.peer_url(8001)
    assert sandbox.exec("python3", "-c", FETCH, env={"URL": url}).stdout == "unreachable\n"


# -- daemons and readiness -------------------------------------------------------------------

@pytest.mark.sandbox(
    daemons=[
        Daemon("logger", "echo starting; sleep 0.3; echo READY now; sleep 600",
               ready=Probe.log(r"^READY")),
        Daemon("flag", "sleep 0.3; touch /tmp/flag; sleep 600",
               ready=Probe.exec("test", "-f", "/tmp/flag")),
        Daemon("env", ["sh", "-c", "echo $D_VAR $PWD; sleep 600"], env={"D_VAR": "dv"},
               workdir="/tmp", ready=Probe.log("dv")),
    ]
)
def test_log_and_exec_probes_and_daemon_env(sandbox):
    assert "READY now" in sandbox.logs("logger")
    assert sandbox.exec("test", "-f", "/tmp/flag").returncode == 0
    assert sandbox.logs("env") == "dv /tmp\n"
    with pytest.raises(NotDeclaredError, match="no daemon named 'nope'"):
        sandbox.logs("nope")


@pytest.mark.sandbox(
    daemons=[Daemon("flaky", "echo run; sleep 600", restart=True, ready=Probe.log("run"))]
)
def test_restart_brings_a_daemon_back(sandbox):
    pid = sandbox.read_file("/tmp/.sandbox-daemons/flaky/pid").decode().strip()
    sandbox.exec("kill", "-9", pid).check()
    for _ in range(100):
        if sandbox.logs("flaky").count("run") >= 2:
            break
        time.sleep(0.1)
    log = sandbox.logs("flaky")
    assert log.count("run") >= 2 and "exited with code 137; restarting" in log


# -- specs: markers, secrets, parametrization --------------------------------------------------

@pytest.mark.sandbox(secrets=[{"S1": "one", "SHARED": "secret"}], env={"SHARED": "env"})
def test_env_wins_over_secrets(sandbox):
    out = sandbox.exec("sh", "-c", "echo $S1 $SHARED ${FROM_MODULE:-unset}").stdout
    assert out == "one env unset\n"  # the nearest marker's env replaces the module's


@pytest.mark.sandbox(env={"FROM_CLASS": "class"})
class TestMarkers:
    def test_class_marker_wins_per_field(self, sandbox):
        out = sandbox.exec("sh", "-c", "echo ${FROM_CLASS:-} ${FROM_MODULE:-unset}").stdout
        assert out == "class unset\n"
        assert sandbox.spec.timeout == 120  # from the module marker


@pytest.mark.parametrize(
    "sandbox", [{"env": {"ROW": "a"}}, SandboxSpec(env={"ROW": "b"})], indirect=True
)
def test_indirect_parametrization(sandbox):
    row = sandbox.exec("sh", "-c", "echo $ROW").stdout.strip()
    # a dict overrides only its fields; a full SandboxSpec replaces every field
    assert (row, sandbox.spec.timeout) in (("a", 120), ("b", 600))


# -- scopes and lifetime ---------------------------------------------------------------------

module_box = sandbox_fixture(scope="module")
ids = []


@pytest.mark.parametrize("n", [1, 2])
def test_module_scope_is_reused(module_box, n):
    ids.append(module_box.id)
    assert len(set(ids)) == 1


def test_terminate_ends_the_sandbox(sandbox):
    assert sandbox.finished() is None
    sandbox.terminate(wait=True)
    assert sandbox.finished() is not None
    with pytest.raises(SandboxGone, match="terminated by this handle") as info:
        sandbox.exec("true")
    assert info.value.how == "terminated" and info.value.sandbox_id == sandbox.id


@pytest.mark.sandbox(timeout=2)
def test_a_sandbox_past_its_timeout_is_a_clear_error(sandbox):
    t0 = time.monotonic()
    with pytest.raises(SandboxGone) as info:
        sandbox.exec("sleep", "300", timeout=90)
    assert time.monotonic() - t0 < 80  # ended by the sandbox's end, not the command's timeout
    assert info.value.how == "timeout", info.value
    assert sandbox.id in str(info.value) and "reached its timeout of 2 s" in str(info.value)
    for gone in (lambda: sandbox.exec("true"), lambda: sandbox.read_file("/etc/hostname")):
        with pytest.raises(SandboxGone, match="reached its timeout"):
            gone()
    assert "timed out" in sandbox.finished()
"""


SUITE_TESTS = 20  # inner tests in SUITE; every one passes on every backend
