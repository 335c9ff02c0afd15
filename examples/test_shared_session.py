"""One sandbox for the whole run: share="run" means one, even under pytest-xdist."""

import redis as redis_client

from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

redis_server = sandbox_fixture(
    image="redis:7",
    scope="session",
    share="run",  # every xdist worker attaches to the same sandbox
    daemons=[Daemon("redis", "redis-server --port 6379 --save ''", ready=Probe.tcp(6379))],
    unencrypted_ports=[6379],
)


def connect(sandbox):
    host, port = sandbox.tcp(6379)
    return redis_client.Redis(host=host, port=port)


def test_first_visit(redis_server):
    assert connect(redis_server).incr("visits") >= 1


def test_second_visit(redis_server):
    assert connect(redis_server).incr("visits") >= 1


def test_state_persists_between_tests(redis_server):
    r = connect(redis_server)
    r.rpush("log", "seen")
    assert r.llen("log") >= 1  # earlier tests, on any worker, wrote to the same server
