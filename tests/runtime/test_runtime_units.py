"""Pure logic of the runtime: config validation, ids, path resolution, bwrap argv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_modal_sandbox.runtime import InvalidConfig, SandboxConfig
from pytest_modal_sandbox.runtime.ids import is_sandbox_id, new_sandbox_id
from pytest_modal_sandbox.runtime.mounts import (
    SECCOMP_FD,
    USERNS2_FD,
    bwrap_argv,
    proc_args,
    resolve_in_root,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": "echo hi"}, r"SandboxConfig.command='echo hi': must be a sequence"),
        ({"command": []}, "must not be empty"),
        ({"command": ["echo", 1]}, "must be a str"),
        ({"env": {"A=B": "x"}}, "must not contain '='"),
        ({"env": {"A": 1}}, r"env\['A'\]"),
        ({"workdir": "srv"}, "absolute"),
        ({"timeout": 0}, "positive"),
        ({"timeout": float("inf")}, "finite"),
        ({"timeout": True}, "number"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"ports": [0]}, "not a port number"),
        ({"ports": [80, 80]}, "listed twice"),
        ({"ports": "80"}, "sequence of port numbers"),
        ({"app": ""}, "SandboxConfig.app"),
        ({"name": "has space"}, "SandboxConfig.name"),
        ({"name": "x" * 65}, "SandboxConfig.name"),
        ({"tags": {"k": 1}}, "tags"),
        ({"stdin_pipe": "yes"}, "stdin_pipe"),
        ({"hostname": "bad_host"}, "hostname"),
        ({"rootfs_writable": True}, r"SandboxConfig.rootfs_writable=True: needs a rootfs"),
        ({"rootfs": "/x", "rootfs_writable": 1}, "rootfs_writable=1: must be True or False"),
        ({"network": "yes"}, "network"),
        ({"network": True, "ports": [80]}, r"ports=\(80,\): cannot be forwarded"),
    ],
)
def test_config_errors_name_field_and_value(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        SandboxConfig(**fields)  # type: ignore[arg-type]


def test_config_normalises() -> None:
    cfg = SandboxConfig(command=["a", "b"], workdir="/srv//app/", ports=[80, 443], env={"A": "1"})
    assert cfg.command == ("a", "b") and cfg.workdir == "/srv/app" and cfg.ports == (80, 443)
    assert hash(cfg) == hash(
        SandboxConfig(command=("a", "b"), workdir="/srv/app", ports=(80, 443), env={"A": "1"})
    )


def test_ids_are_v2_shaped_and_sort_by_time() -> None:
    first = new_sandbox_id(1_700_000_000.0)
    second = new_sandbox_id(1_700_000_001.0)
    assert is_sandbox_id(first) and len(first) == 29 and first < second
    assert not is_sandbox_id("sb-" + "a" * 22) and not is_sandbox_id("../x")


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real" / "sub").mkdir(parents=True)
    os.symlink("/real", root / "abs")
    os.symlink("real/sub", root / "rel")
    os.symlink("../../..", root / "real" / "up")
    r = str(root)
    assert resolve_in_root(r, "/abs/sub") == f"{r}/real/sub"
    assert resolve_in_root(r, "/rel") == f"{r}/real/sub"
    assert resolve_in_root(r, "/real/up/real") == f"{r}/real"  # .. stops at the root
    assert resolve_in_root(r, "/../../") == r
    os.symlink("loop", root / "loop")
    with pytest.raises(OSError, match="symbolic links"):
        resolve_in_root(r, "/loop")


def _argv(workdir: str, existing: set[str], listing: dict[str, list[str]]) -> list[str]:
    """The non-root host view: ``/view`` read-only, the workdir a host directory."""
    return bwrap_argv(
        bwrap="bwrap",
        command=["sleep", "1"],
        hostname="h",
        workdir=workdir,
        userns="own",
        root="/view",
        readonly_root=True,
        host_workdir="/state/work",
        hosts_path="/state/hosts",
        exists=lambda p: p in existing,
        listdir=lambda p: listing[p],
    )


def test_bwrap_argv_binds_workdir_over_an_existing_dir() -> None:
    argv = _argv("/srv", {"/", "/srv", "/tmp", "/run", "/var/tmp"}, {})
    i = argv.index("--ro-bind")
    assert argv[i : i + 3] == ["--ro-bind", "/view", "/"]
    i = argv.index("--bind")
    assert argv[i : i + 3] == ["--bind", "/state/work", "/srv"]
    assert argv[-5:] == ["--chdir", "/srv", "--", "sleep", "1"]


def test_bwrap_argv_materialises_the_deepest_existing_ancestor() -> None:
    argv = _argv("/srv/a/b", {"/", "/srv", "/tmp"}, {"/srv": ["x"]})
    joined = " ".join(argv)
    assert "--ro-bind /view / --tmpfs /srv --ro-bind /view/srv/x /srv/x" in joined
    assert "--bind /state/work /srv/a/b" in joined
    assert "--tmpfs /run" not in joined  # absent on this "host"


def test_bwrap_argv_materialises_the_root_for_a_new_top_level_dir() -> None:
    argv = _argv("/app", {"/", "/usr"}, {"/": ["usr"]})
    joined = " ".join(argv)
    assert "--ro-bind /view /" not in joined
    assert "--ro-bind /view/usr /usr" in joined and "--tmpfs /tmp" in joined
    assert "--bind /state/work /app" in joined


def test_bwrap_argv_under_tmp_needs_no_materialising() -> None:
    joined = " ".join(_argv("/tmp/w", {"/", "/tmp"}, {}))
    assert "--ro-bind /view / --dev /dev --proc /proc" in joined
    assert joined.index("--tmpfs /tmp") < joined.index("--bind /state/work /tmp/w")


def test_bwrap_argv_user_namespaces_and_walls() -> None:
    root = bwrap_argv(bwrap="bwrap", command=["true"], hostname="h", workdir="/", userns="pair",
                      root="/view")  # fmt: skip
    assert root[1:3] == ["--userns2", str(USERNS2_FD)] and "--unshare-user" not in root
    assert ["--seccomp", str(SECCOMP_FD)] == root[root.index("--seccomp") :][:2]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup"):
        assert flag in root
    assert "--new-session" in root and "--die-with-parent" in root
    assert root[root.index("--bind") : root.index("--bind") + 3] == ["--bind", "/view", "/"]
    other = bwrap_argv(bwrap="bwrap", command=["true"], hostname="h", workdir="/", userns="own",
                       root="/view", seccomp=False)  # fmt: skip
    assert other[1:6] == ["--unshare-user", "--uid", "0", "--gid", "0"]
    assert "--seccomp" not in other and "--userns2" not in other


def test_proc_is_covered_like_dockers() -> None:
    present = {"/proc/sys", "/proc/irq", "/proc/kcore", "/proc/timer_list", "/proc/sysrq-trigger"}
    args = " ".join(proc_args(exists=lambda p: p in present))
    assert args.startswith("--proc /proc")
    for name in ("sys", "irq", "sysrq-trigger"):
        assert f"--ro-bind /proc/{name} /proc/{name}" in args
    assert "--ro-bind /dev/null /proc/timer_list" in args
    assert "/proc/kcore" not in args  # needs CAP_SYS_RAWIO outside: nothing to mask
    assert "/proc/bus" not in args  # absent here


def test_bwrap_argv_build_mode_shares_the_network_and_keeps_tmp() -> None:
    common = dict(
        bwrap="bwrap",
        command=["true"],
        hostname="h",
        workdir="/",
        userns="pair",
        hosts_path="/s/hosts",
        root="/img",
    )
    isolated = bwrap_argv(**common, resolv_path="/s/resolv.conf")  # type: ignore[arg-type]
    assert "--unshare-net" in isolated and "/tmp" in isolated
    assert isolated[isolated.index("/s/resolv.conf") - 1] == "--bind"
    build = bwrap_argv(  # type: ignore[arg-type]
        **common, resolv_path="/etc/resolv.conf", share_net=True, private_tmp=False
    )
    assert "--unshare-net" not in build and "/tmp" not in build
    assert build[build.index("/etc/resolv.conf") - 1] == "--ro-bind"  # never the host's, rw


def test_listening_ports_reads_proc_net_tcp() -> None:
    from pytest_modal_sandbox.runtime.ports import listening_ports

    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000\n"  # 8000 LISTEN
        "   1: 0100007F:18EB 0100007F:A2C4 01 00000000:00000000\n"  # 6379 ESTABLISHED
        "   0: 00000000000000000000000000000000:18EB 00000000000000000000000000000000:0000 0A\n"
    )
    assert listening_ports(table) == {8000, 6379}


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
29 24 0:26 / /dev/pts rw,relatime - devpts devpts rw
40 27 8:2 / /var rw,relatime - xfs /dev/sda2 rw
41 40 8:3 / /var/lib/data rw,relatime - ext4 /dev/sda3 rw
42 27 8:1 / /boot ro,relatime - ext4 /dev/sda1 ro
43 27 7:0 / /snap/core/1 ro,nodev,relatime - squashfs /dev/loop0 ro
44 27 0:40 / /home rw,relatime - ext4 /dev/sda4 rw
45 27 0:41 / /run rw,nosuid - tmpfs tmpfs rw
46 27 0:42 / /mnt/with\\040space rw - ext4 /dev/sda5 rw
47 27 0:43 / /media/phone rw - fuse.gvfsd-fuse gvfsd rw
48 27 0:44 / /var rw,relatime - ext4 /dev/sda6 rw
"""


def test_host_layers_are_the_real_file_systems_parents_first() -> None:
    from pytest_modal_sandbox.runtime.hostview import host_layers

    layers = host_layers(MOUNTINFO, excluded=["/home", "/tmp", "/run"])
    assert [(layer["target"], layer["mode"]) for layer in layers] == [
        ("/", "overlay"),
        ("/boot", "bind"),  # read-only: nothing to write there anyway
        ("/var", "overlay"),  # the later /var, which covers the first and /var/lib/data
        ("/mnt/with space", "overlay"),
        ("/snap/core/1", "bind"),
    ]  # not: /proc, /dev/*, /home (hidden), /run (scratch), fuse


def test_only_per_user_paths_may_be_hidden() -> None:
    from pytest_modal_sandbox.runtime.hostview import _may_hide

    for path in ("/root", "/home/me", "/var/lib/jenkins", "/srv/ci/.aws", "/etc/custom-secret"):
        assert _may_hide(path), path
    for path in ("/", "/usr", "/usr/share", "/var", "/var/lib", "/etc", "/opt", "/bin/x", "rel"):
        assert not _may_hide(path), path


def test_shadow_files_keep_their_accounts_not_their_passwords(tmp_path: Path) -> None:
    from pytest_modal_sandbox.runtime.hostview import _sanitised

    shadow = tmp_path / "shadow"
    shadow.write_text("root:$6$salt$hash:19000:0:99999:7:::\nsvc:!:19000::::::\n")
    assert _sanitised(str(shadow)) == b"root:*:19000:0:99999:7:::\nsvc:*:19000::::::\n"
    assert _sanitised(str(tmp_path / "none")) is None


def test_host_view_plan_hides_and_makes_the_workdir(tmp_path: Path) -> None:
    from pytest_modal_sandbox.runtime.hostview import overlay_plan

    mountinfo = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    plan = overlay_plan(root="/r", ovl="/o", workdir="/root/app", hosts=b"h\n", state_dirs=(),
                        mountinfo=mountinfo)  # fmt: skip
    (layer,) = plan["layers"]  # type: ignore[misc]
    entries = {e[1]: e[0] for e in layer["entries"]}
    assert entries["root"] == "opaque" and entries["root/app"] == "opaque"
    assert list(entries).index("root") < list(entries).index("root/app")
    assert entries["tmp"] == entries["run"] == entries["home"] == "opaque"
    assert entries["etc/hosts"] == "file"
    assert "etc" in entries and entries["etc"] == "dir"  # a parent, merged with the host's
    if os.path.exists("/etc/shadow"):
        assert entries["etc/shadow"] == "file"


def test_seccomp_programs_per_architecture() -> None:
    from pytest_modal_sandbox.runtime import seccomp

    x86, arm = seccomp.program("x86_64"), seccomp.program("aarch64")
    assert x86 and arm and len(x86) % 8 == 0 and x86 != arm
    assert len(x86) // 8 < 256  # every jump fits its 8-bit offset
    assert seccomp.program("riscv64") is None
    allow = seccomp.RET_ALLOW.to_bytes(4, "little")
    assert x86[-24:-16].endswith(allow)  # the three returns: allow, EPERM, ENOSYS
