"""Unit tests for the emulator's pure pieces: ids, tokens, registries, image chains, TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import ssl
import threading
import time

import pytest

from pytest_modal_sandbox.emulator import ids, registry
from pytest_modal_sandbox.emulator.rpc_error import RpcError
from pytest_modal_sandbox.emulator.tls import make_tls_material


def test_ids_have_the_shapes_the_client_routes_on() -> None:
    sb = ids.sandbox_id()
    assert re.fullmatch(r"sb-[0-9A-HJKMNP-TV-Z]{26}", sb)
    assert not ids.is_v1_sandbox_id(sb)
    assert ids.is_v1_sandbox_id("sb-" + "a" * 22)
    ta = ids.task_id()
    assert ta.startswith("ta-") and ta.endswith("V")
    for prefix in ("ap", "im", "st", "en"):
        assert re.fullmatch(prefix + r"-[a-zA-Z0-9]{22}", ids.object_id(prefix))


def test_ulids_sort_by_time() -> None:
    early = ids.ulid(1_000_000.0)
    late = ids.ulid(2_000_000.0)
    assert len(early) == len(late) == 26
    assert early < late


def test_tokens_are_jwts_with_exp_and_verify_only_for_their_signer() -> None:
    signer = ids.TokenSigner()
    token = signer.mint({"task_id": "ta-x"}, ttl=60)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["task_id"] == "ta-x"
    assert claims["exp"] > time.time()
    assert signer.verify(token) == claims
    assert ids.TokenSigner().verify(token) is None
    assert signer.verify("fake-jwt-token") is None
    assert signer.verify(signer.mint({}, ttl=-10)) is None


def test_apps_follow_get_or_create_semantics() -> None:
    reg = registry.Registry()
    with pytest.raises(RpcError) as err:
        reg.app_get_or_create("a", "", registry.CREATION_UNSPECIFIED)
    assert err.value.status == "NOT_FOUND"
    app = reg.app_get_or_create("a", "", registry.CREATE_IF_MISSING)
    assert reg.app_get_or_create("a", "main", registry.CREATION_UNSPECIFIED) is app
    assert reg.app_by_id(app.id) is app
    with pytest.raises(RpcError) as err:
        reg.app_get_or_create("a", "", registry.CREATE_FAIL_IF_EXISTS)
    assert err.value.status == "ALREADY_EXISTS"


def test_unknown_environments_are_rejected_unless_declared() -> None:
    reg = registry.Registry(environments=["dev"])
    assert reg.environment("").name == "main"
    assert reg.environment("dev").id.startswith("en-")
    with pytest.raises(RpcError, match="--environment"):
        reg.environment("prod")


def test_named_and_anonymous_secrets() -> None:
    reg = registry.Registry(secrets={"db": {"USER": "u"}})
    db = reg.secret_get_or_create("db", "", registry.CREATION_UNSPECIFIED, {})
    assert db.env == {"USER": "u"}
    assert reg.secret(db.id) is db
    with pytest.raises(RpcError, match="missing required key"):
        reg.secret_get_or_create("db", "", registry.CREATION_UNSPECIFIED, {}, ["PASSWORD"])
    with pytest.raises(RpcError) as err:
        reg.secret_get_or_create("db", "", registry.CREATE_FAIL_IF_EXISTS, {"X": "1"})
    assert err.value.status == "ALREADY_EXISTS"
    anon = reg.secret_get_or_create("", "", registry.ANONYMOUS_OWNED_BY_APP, {"A": "1"})
    assert anon.name is None and reg.secret(anon.id).env == {"A": "1"}
    reg.secret_delete(db.id)
    with pytest.raises(RpcError):
        reg.secret_get_or_create("db", "", registry.CREATION_UNSPECIFIED, {})


def test_tls_material_serves_verified_https_on_loopback(tmp_path) -> None:
    material = make_tls_material(tmp_path)
    server_ctx = material.server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        for host in ("127.0.0.1", "localhost"):
            ctx = ssl.create_default_context(cafile=str(material.ca_file))
            with ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port)), server_hostname=host
            ) as tls:
                assert tls.recv(2) == b"ok"
    finally:
        thread.join(timeout=5)
        listener.close()


def test_listening_ports_reads_proc_net_tcp() -> None:
    from pytest_modal_sandbox.emulator.probes import listening_ports

    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000\n"
        "   1: 0100007F:0050 0100007F:C350 01 00000000:00000000\n"
        "   0: 00000000000000000000000000000000:18EB 00000000000000000000000000000000:0000 0A 0\n"
    )
    assert listening_ports(table) == {8000, 6379}


def test_merge_env_applies_sources_in_order_env_last() -> None:
    from modal_proto import api_pb2

    from pytest_modal_sandbox.emulator.secret_env import merge_env

    reg = registry.Registry(secrets={"named": {"A": "named", "B": "named"}})
    named = reg.secret_get_or_create("named", "", registry.CREATION_UNSPECIFIED, {})
    sources = [
        api_pb2.SecretSource(env=api_pb2.StringMap(contents={"A": "dict", "C": "dict"})),
        api_pb2.SecretSource(secret_id=named.id),
        api_pb2.SecretSource(env=api_pb2.StringMap(contents={"C": "env"})),
    ]
    env = merge_env(sources, secret_ids=[named.id], secrets=reg)
    assert env == {"A": "named", "B": "named", "C": "env"}
    legacy = merge_env([], secret_ids=[named.id], legacy_env={"B": "env"}, secrets=reg)
    assert legacy == {"A": "named", "B": "env"}
    with pytest.raises(RpcError) as err:
        merge_env([api_pb2.SecretSource(secret_id="st-missing")], secrets=reg)
    assert err.value.status == "NOT_FOUND"


@pytest.mark.parametrize(
    ("kind", "exitcode", "idle_status", "status", "code"),
    [
        ("success", 0, "timeout", 1, 0),
        ("failure", 3, "timeout", 2, 3),
        ("terminated", None, "timeout", 3, 137),
        ("timeout", None, "timeout", 4, 124),
        ("idle_timeout", None, "timeout", 4, 124),
        ("idle_timeout", None, "terminated", 3, 137),
        ("idle_timeout", None, "idle_timeout", 7, 124),
    ],
)
def test_exit_status_maps_to_the_generic_result_the_client_expects(
    kind: str, exitcode: int | None, idle_status: str, status: int, code: int
) -> None:
    from pytest_modal_sandbox.emulator.records import result_for
    from pytest_modal_sandbox.runtime import ExitStatus

    result = result_for(ExitStatus(kind, exitcode, time.time()), idle_status)  # type: ignore[arg-type]
    assert (result.status, result.exitcode) == (status, code)


def test_an_exec_is_killed_members_first_so_its_leader_sees_its_child_die() -> None:
    """The emulator kills an exec with the runtime's kill_exec: nsenter (the group leader) must
    outlive its child and reap it, or the child is orphaned to the host's init.  A shell as the
    leader shows the order: it gets to run the line after its killed child."""
    import contextlib

    from pytest_modal_sandbox.emulator.execs import ExecProcess

    async def scenario() -> tuple[int | None, bytes]:
        proc = ExecProcess("ex-1")
        await proc.start(
            ["sh", "-c", "sleep 1000; echo outlived-its-child"],
            dict(os.environ),
            stdout=True,
            stderr=True,
            timeout=0.01,  # killed KILL_GRACE later
            activity=contextlib.nullcontext(),
            on_stdin=lambda: None,
        )
        await asyncio.wait_for(proc.exited.wait(), 30)
        await proc.aclose()
        return proc.returncode, proc.stdout.getvalue()

    returncode, out = asyncio.run(scenario())
    assert out == b"outlived-its-child\n"
    assert returncode in (0, -9)  # exited by itself, or killed last after its grace
