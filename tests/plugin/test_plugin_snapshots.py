"""``sandbox.snapshot()`` and ``sandbox_fixture(snapshot_of=...)`` through pytest itself: clones
start fresh and independent from a prepared template, on every backend, under ``-n 2`` with a
``share="run"`` template (prepared once per run), and mistakes are clean per-test errors."""

from __future__ import annotations

import sys

import pytest

CLONES = r"""
import pytest
from pytest_modal_sandbox import Daemon, Probe, sandbox_fixture

PREPARES = "/tmp/prepares"  # on the host: this test's tmp dir is not in the sandboxes

def prepare(sb):
    sb.sh("mkdir -p /srv/db && echo seeded > /srv/db/data && echo t > /tmp/t").check()
    with open(PREPARES, "a") as f:
        f.write(sb.id + "\n")

db_template = sandbox_fixture(
    scope="session",
    share="run",
    prepare=prepare,
    daemons=[Daemon("web", "cd /srv && python3 -m http.server 8000", ready=Probe.tcp(8000))],
    unencrypted_ports=[8000],
)
db = sandbox_fixture(snapshot_of="db_template")

@pytest.mark.parametrize("n", range(4))
def test_clone_is_fresh(db, db_template, n):
    import urllib.request
    assert db.id != db_template.id
    assert db.read_file("/srv/db/data") == b"seeded\n"
    assert db.read_file("/tmp/t") == b"t\n"
    assert db.sh("ls /srv/db").stdout == "data\n"  # no other clone's file
    db.write_file(f"/srv/db/clone-{n}", "mine")
    assert urllib.request.urlopen(db.url(8000) + "/db/data").read() == b"seeded\n"

def test_snapshot_as_image(sandbox):
    from pytest_modal_sandbox import start
    sandbox.write_file("/srv/one", "1")
    snap = sandbox.snapshot()
    if sandbox.backend != "local":  # the Modal path: test_clone_is_fresh, the emulator tests
        return
    with start(image=snap, backend="local", local_images="host") as clone:
        assert clone.read_file("/srv/one") == b"1"
    with pytest.raises(Exception, match="taken on the local backend.*on the emulator backend"):
        snap.require_backend("emulator")  # what every backend's create checks first
    import dataclasses
    forged = dataclasses.replace(snap, layers=(("/", "/root"),))
    with pytest.raises(Exception, match="/root is not a layer of a snapshot taken on this machine"):
        with start(image=forged, backend="local", local_images="host"):
            pass
"""

MISTAKES = r"""
from pytest_modal_sandbox import sandbox_fixture

per_test = sandbox_fixture(prepare="true")
broken = sandbox_fixture(scope="module", prepare=["true", "echo no-such-table >&2; exit 3"])
d = sandbox_fixture(snapshot_of="broken")
a = sandbox_fixture(snapshot_of="db_templat")
b = sandbox_fixture(snapshot_of="per_test")
c = sandbox_fixture(snapshot_of="c")

def test_unknown(a): pass
def test_function_scope(b): pass
def test_cycle(c): pass
def test_prepare_fails(d): pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one", "xdist"])
def test_clones_of_a_run_template(sbtester, backend, workers, tmp_path):
    if backend != "local" and workers:
        pytest.skip("-n 2 runs on the local backend (the emulator run covers the Modal path)")
    prepares = tmp_path / "prepares"
    sbtester.makepyfile(test_clones=CLONES.replace("/tmp/prepares", str(prepares)))
    result = sbtester.runpytest(
        f"--modal-sandbox={backend}", "--modal-sandbox-ahead=2", "-p", "xdist", *workers
    )
    result.assert_outcomes(passed=5)
    assert len(prepares.read_text().split()) == 1  # once per run, for every worker
    if not workers:  # the template, 3 clones (all but the first) and the `sandbox` of the last
        result.stdout.fnmatch_lines(["*started ahead: 5, used 5, wasted 0*"])


def test_mistakes_are_clean_per_test_errors(sbtester):
    sbtester.makepyfile(test_mistakes=MISTAKES)
    result = sbtester.runpytest("--modal-sandbox=local")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(
        [
            "*snapshot_of='db_templat' names no fixture visible here*",
            "*snapshot_of='per_test': the template has function scope*",
            "*snapshot_of='c': a cycle (c -> c)*",
            "*sandbox fixture 'broken': template 'broken': its prepare step failed*",
            "*no-such-table*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


KEEP = r"""
def test_snapshots(sandbox):
    sandbox.write_file("/srv/x", "x")
    sandbox.snapshot()
    sandbox.snapshot(keep=True)
"""


def test_snapshots_go_with_the_run_unless_kept_and_prune_removes_those(sbtester, state_dir):
    sbtester.makepyfile(test_keep=KEEP)
    sbtester.runpytest("--modal-sandbox=local").assert_outcomes(passed=1)
    store = state_dir / "local-snapshots"
    assert len(list(store.glob("snap-*"))) == 1  # the kept one
    cache = ["--cache-dir", str(state_dir / "image-cache")]  # not this machine's image cache
    prune = sbtester.run(sys.executable, "-m", "pytest_modal_sandbox", "images", *cache, "prune")
    assert prune.ret == 0
    prune.stdout.fnmatch_lines(["removed 1 snapshot(s)"])
    assert not list(store.glob("snap-*"))
