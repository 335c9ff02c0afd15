"""Pure validation logic of SandboxSpec / Daemon / Probe."""

from __future__ import annotations

import pytest

from pytest_modal_sandbox import Daemon, Probe, SandboxSpec, SpecError
from pytest_modal_sandbox.spec import spec_from_fields


def test_valid_spec_is_hashable_and_stable():
    a = SandboxSpec(
        image="redis:7",
        daemons=[Daemon("r", ["redis-server", "--port", "6379"], ready=Probe.tcp(6379))],
        unencrypted_ports=[6379],
        env={"A": "1"},
        secrets=[{"TOKEN": "s3cret"}],
    )
    b = SandboxSpec(
        image="redis:7",
        daemons=(Daemon("r", ("redis-server", "--port", "6379"), ready=Probe.tcp(6379)),),
        unencrypted_ports=(6379,),
        env={"A": "1"},
        secrets=({"TOKEN": "s3cret"},),
    )
    assert a == b and hash(a) == hash(b)
    assert a.spec_hash == b.spec_hash and len(a.spec_hash) == 12
    assert a.spec_hash != a.replace(image="redis:8").spec_hash
    assert "s3cret" not in repr(a) and "s3cret" not in a.spec_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"imgae": "x"}, "unknown field 'imgae' (did you mean 'image'?)"),
        (
            {"image": 3},
            "image: must be an image reference string, a modal.Image or a Snapshot (got 3)",
        ),
        ({"image": "has space"}, "image: must be a non-empty image reference"),
        ({"unencrypted_ports": [0]}, "unencrypted_ports[0]: is outside 1..65535 (got 0)"),
        ({"encrypted_ports": [70000]}, "encrypted_ports[0]: is outside 1..65535 (got 70000)"),
        ({"h2_ports": ["80"]}, "h2_ports[0]: must be an int port number (got '80')"),
        ({"h2_ports": [True]}, "h2_ports[0]: must be an int port number (got True)"),
        (
            {"encrypted_ports": [80, 80]},
            "encrypted_ports[1]: is already declared in encrypted_ports",
        ),
        (
            {"encrypted_ports": [80], "unencrypted_ports": [80]},
            "unencrypted_ports[0]: is already declared in encrypted_ports (got 80)",
        ),
        ({"env": {"1A": "x"}}, "env key: must be an identifier"),
        (
            {"env": {"A-B": "x"}},
            "env key: must be an identifier ([A-Za-z_][A-Za-z0-9_]*) (got 'A-B')",
        ),
        ({"env": {"A": 1}}, "env['A']: must be a str (got 1)"),
        ({"env": ["A=1"]}, "env: must be a dict of str to str"),
        ({"secrets": [{"K": 5}]}, "secrets[0]['K']: must be a str (got '<hidden>')"),
        ({"secrets": ["K=V"]}, "secrets[0]: must be a dict of str to str or a modal.Secret"),
        ({"workdir": "srv"}, "workdir: must be an absolute path (got 'srv')"),
        ({"timeout": 0}, "timeout: must be positive (got 0)"),
        ({"timeout": -5}, "timeout: must be positive (got -5)"),
        ({"timeout": "10"}, "timeout: must be a number of seconds (got '10')"),
        ({"timeout": 90000}, "timeout: must be at most 86400 seconds"),
        ({"idle_timeout": 0}, "idle_timeout: must be positive (got 0)"),
        ({"cpu": 0}, "cpu: must be a positive number of cores"),
        ({"memory": 1.5}, "memory: must be a positive number of MiB"),
        ({"daemons": ["sleep 1"]}, "daemons[0]: must be a Daemon(...)"),
        ({"daemons": [Daemon("a", "")]}, "daemons[0] (a).command: must not be empty"),
        ({"daemons": [Daemon("a", [])]}, "daemons[0] (a).command: must be a non-empty"),
        ({"daemons": [Daemon("a b", "x")]}, "daemons[0].name: must be 1-64 chars"),
        (
            {"daemons": [Daemon("a", "x"), Daemon("a", "y")]},
            "daemons[1].name: is a duplicate daemon name (got 'a')",
        ),
        ({"daemons": [Daemon("a", "x", env={"1": "x"})]}, "daemons[0] (a).env key: must be an id"),
        ({"daemons": [Daemon("a", "x", workdir="x")]}, "daemons[0] (a).workdir: must be absolute"),
        (
            {"daemons": [Daemon("a", "x", ready=Probe.tcp(0))]},
            "daemons[0] (a).ready.port: must be an int port in 1..65535 (got 0)",
        ),
        (
            {"daemons": [Daemon("a", "x", ready=Probe.http(8000))]},
            "daemons[0] (a).ready.port: is not declared",
        ),
        (
            {"daemons": [Daemon("a", "x", ready=Probe.log("("))]},
            "daemons[0] (a).ready.pattern: is not a valid regex",
        ),
        ({"daemons": [Daemon("a", "x", ready=Probe.exec())]}, "daemons[0] (a).ready.argv: must be"),
        (
            {"daemons": [Daemon("a", "x", ready=Probe.tcp(80, timeout=0))]},
            "daemons[0] (a).ready.timeout: must be positive (got 0)",
        ),
        ({"daemons": [Daemon("a", "x", ready="tcp")]}, "daemons[0] (a).ready: must be a Probe"),
        ({"block_network": 1}, "block_network: must be True or False (got 1)"),
        ({"cidr_allowlist": "10.0.0.0/8"}, "cidr_allowlist: must be a list of CIDR strings"),
        ({"cidr_allowlist": ["10.0.0.0/8", "10.0.0.300/8"]}, "'10.0.0.300/8' is not a CIDR"),
        ({"block_network": True, "cidr_allowlist": []}, "cannot be used with block_network"),
        (
            {"block_network": True, "unencrypted_ports": [5432]},
            "block_network: a sandbox without network cannot open ports (declared: [5432])",
        ),
    ],
)
def test_bad_fields_name_field_and_value(fields, message):
    with pytest.raises(SpecError) as info:
        spec_from_fields(fields)
    # "must be absolute" style shorthands in the table are prefixes of the real message
    expected = message.replace("must be absolute", "must be an absolute path")
    assert expected in str(info.value)


def test_tcp_probe_port_need_not_be_declared():
    spec = SandboxSpec(daemons=[Daemon("a", "x", ready=Probe.tcp(9999))])
    assert spec.ports == ()


def test_http_probe_on_declared_port_is_fine():
    spec = SandboxSpec(
        daemons=[Daemon("a", "x", ready=Probe.http(8000, "/health"))], h2_ports=[8000]
    )
    assert spec.port_kind(8000) == "h2_ports"


def test_daemon_shell_command_quotes_argv():
    assert Daemon("a", ["echo", "a b", "it's"]).shell_command == "echo 'a b' 'it'\"'\"'s'"


def test_secret_values_are_listed_for_scrubbing():
    spec = SandboxSpec(secrets=[{"A": "one", "B": ""}], env={"C": "visible"})
    assert spec.secret_values() == ["one"]
