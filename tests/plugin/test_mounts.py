"""``mounts=``: the user's files in the sandbox on every backend, private to it."""

from __future__ import annotations

MOUNTS = """
import pathlib
import pytest

@pytest.mark.sandbox(mounts={"/srv/app": "app", "/etc/app.ini": "conf/app.ini"})
def test_mounted(sandbox):
    assert sandbox.exec("cat", "/srv/app/main.py", "/etc/app.ini").stdout == "print(1)\\nk=v\\n"
    assert sandbox.exec("/srv/app/bin/run.sh").stdout == "ran\\n"
    res = sandbox.exec("sh", "-c", "echo changed > /srv/app/main.py && echo x > /srv/app/new")
    assert res.returncode == 0
    assert sandbox.exec("cat", "/srv/app/main.py").stdout == "changed\\n"
    # writes inside never reach the user's files
    assert pathlib.Path("app/main.py").read_text() == "print(1)\\n"
    assert not pathlib.Path("app/new").exists()

@pytest.mark.sandbox(mounts={"/srv/app": "nothing/here"})
def test_missing(sandbox):
    pass
"""


def test_mounts_are_private_copies_and_a_missing_path_is_a_clean_error(sbtester, backend):
    sbtester.makepyfile(MOUNTS)
    sbtester.mkdir("app")
    (sbtester.path / "app" / "main.py").write_text("print(1)\n")
    (sbtester.path / "app" / "bin").mkdir()
    run = sbtester.path / "app" / "bin" / "run.sh"
    run.write_text("#!/bin/sh\necho ran\n")
    run.chmod(0o755)
    sbtester.mkdir("conf")
    (sbtester.path / "conf" / "app.ini").write_text("k=v\n")
    result = sbtester.runpytest(f"--modal-sandbox={backend}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*sandbox spec of *test_missing: mounts[[]'/srv/app']: 'nothing/here' does not exist "
            f"on this machine (relative paths are from {sbtester.path}); give an existing*"
        ]
    )
    assert "Traceback" not in result.stdout.str()
