"""A real service: Redis behind an unencrypted port, used by the real redis client."""

import pytest
import redis as redis_client

from pytest_modal_sandbox import Daemon, Probe


@pytest.mark.sandbox(
    image="redis:7",
    daemons=[
        Daemon("redis", "redis-server --port 6379 --save '' --appendonly no", ready=Probe.tcp(6379))
    ],
    unencrypted_ports=[6379],
)
def test_set_and_get(sandbox):
    host, port = sandbox.tcp(6379)
    r = redis_client.Redis(host=host, port=port)
    r.set("greeting", "hello")
    assert r.get("greeting") == b"hello"
    # the same server seen from inside the sandbox
    assert sandbox.exec("redis-cli", "get", "greeting").stdout == "hello\n"
