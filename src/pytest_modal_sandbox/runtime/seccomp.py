"""The sandboxes' seccomp filter: a short denylist, written as classic BPF by hand.

Stdlib only (the keeper loads this file as a plain module).  The walls themselves are the user
namespaces (see ``keeper.py``); this filter narrows the kernel surface under them, like
Docker's default profile does, and holds even for a process that somehow kept capabilities:

* mounting and moving mounts, ``pivot_root``, and new namespaces (``unshare``, ``clone`` with
  a ``CLONE_NEW*`` flag; ``clone3``, whose flags a filter cannot read, answers ``ENOSYS`` so
  that libc falls back to ``clone``) - ``setns`` stays allowed: ``nsenter`` needs it, and
  inside a sandbox it can only re-join the sandbox's own namespaces;
* administering the host: modules, kexec, reboot, swap, clocks, accounting, quotas, syslog;
* kernel keyrings (not fully namespaced), ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring`` (whose operations bypass seccomp) and ``open_by_handle_at``;
* every system call of another ABI (32-bit or x32 on x86-64): those numbers mean other calls.

Denied calls fail with ``EPERM``.  Only x86-64 and aarch64 are described; elsewhere there is
no filter (:func:`program` returns None) and the namespaces are the only walls.
"""

from __future__ import annotations

import errno
import os
import sys

__all__ = ["DENIED", "program"]

DENIED = (
    # file-system namespace and new namespaces
    *("mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig"),
    *("fsmount", "fspick", "mount_setattr", "unshare"),
    # administering the host
    *("init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load"),
    *("reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime"),
    *("syslog", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "vhangup"),
    *("iopl", "ioperm", "uselib"),
    # kernel surface Docker's profile also closes
    *("add_key", "request_key", "keyctl", "bpf", "perf_event_open", "userfaultfd"),
    *("io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at"),
)

# (AUDIT_ARCH_*, {name: number}) from the kernel's unistd tables.
_X86_64 = {
    "clone": 56, "clone3": 435, "mount": 165, "umount2": 166, "pivot_root": 155,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "unshare": 272, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "syslog": 103, "quotactl": 179,
    "quotactl_fd": 443, "lookup_dcookie": 212, "nfsservctl": 180, "vhangup": 153,
    "iopl": 172, "ioperm": 173, "uselib": 134, "add_key": 248, "request_key": 249,
    "keyctl": 250, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_by_handle_at": 304,
}  # fmt: skip
_AARCH64 = {
    "clone": 220, "clone3": 435, "mount": 40, "umount2": 39, "pivot_root": 41,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "unshare": 97, "init_module": 105,
    "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
    "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "syslog": 116, "quotactl": 60,
    "quotactl_fd": 443, "lookup_dcookie": 18, "nfsservctl": 42, "vhangup": 58,
    "add_key": 217, "request_key": 218, "keyctl": 219, "bpf": 280, "perf_event_open": 241,
    "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 265,
}  # fmt: skip
ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}
X32_BIT = 0x40000000  # x86-64's x32 ABI: the same numbers with this bit set
CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    order = sys.byteorder
    return code.to_bytes(2, order) + bytes((jt, jf)) + (k & 0xFFFFFFFF).to_bytes(4, order)


def program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one) as bytes, or None if not described."""
    arch = ARCHES.get(machine or os.uname().machine)
    if arch is None:
        return None
    audit_arch, numbers = arch
    denied = [numbers[name] for name in DENIED if name in numbers]
    args0 = 16 if sys.byteorder == "little" else 20  # low half of seccomp_data.args[0]
    # Layout: checks, then the three returns.  Jump offsets count instructions skipped.
    body: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, 4),  # arch
        (_JEQ_K, 0, "nosys", audit_arch),
        (_LD_W_ABS, 0, 0, 0),  # nr
    ]
    if audit_arch == ARCHES["x86_64"][0]:
        body.append((_JGE_K, "nosys", 0, X32_BIT))
    body += [(_JEQ_K, "perm", 0, nr) for nr in denied]
    body += [
        (_JEQ_K, "nosys", 0, numbers["clone3"]),
        (_JEQ_K, 0, "allow", numbers["clone"]),
        (_LD_W_ABS, 0, 0, args0),  # clone's flags
        (_JSET_K, "perm", "allow", CLONE_NEW_FLAGS),
    ]
    labels = {"allow": len(body), "perm": len(body) + 1, "nosys": len(body) + 2}
    out = b""
    for index, (code, jt, jf, k) in enumerate(body):
        hops = [labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf)]
        out += _insn(code, hops[0], hops[1], k)
    out += _insn(_RET_K, 0, 0, RET_ALLOW)
    out += _insn(_RET_K, 0, 0, RET_ERRNO | errno.EPERM)
    out += _insn(_RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)
    return out
