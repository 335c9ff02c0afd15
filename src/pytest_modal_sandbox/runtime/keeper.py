"""The keeper: one small process per sandbox that runs bubblewrap and decides when it ends.

Forked by the keeper server of the creating process (:func:`serve`, started once per process
as ``python -I -S keeper.py --serve <fd> <padding>``; ``forkserver.py``) ahead of its sandbox,
as a spare, in a session of its own, so a Ctrl-C aimed at pytest's process group does not
reach it.  It must only use the standard library: it never imports the package (``linux``,
``userns``, ``egress``, ``spare``, ``hostview`` and ``seccomp`` beside it are stdlib-only
modules it loads directly).  It

* builds the walls (see ``spare.py``, ``userns.py``, ``hostview.py``, ``seccomp.py``), those
  that do not depend on the sandbox's spec while it waits for its sandbox: a mount namespace of
  its own (as another user: in a user namespace of its own too) in which it mounts the
  sandbox's root, so that every mount it makes is locked in the sandbox; as root the two user
  namespaces the sandbox lives in; a fresh session keyring; the seccomp filter, handed to bwrap;
* spawns bwrap (``--die-with-parent``: the keeper is single-threaded, so the parent-death
  signal is reliable) and learns the host pid of the sandbox's PID 1 from ``--info-fd``;
* reports ``ready`` to the creator once PID 1 has forked the entrypoint, i.e. once the mount
  namespace is fully set up, so an exec can never see a half-built root;
* ends the sandbox when the entrypoint exits, on SIGTERM (``terminate``), when the owner goes
  away (EOF on the owner pipe, or the owner lock no longer held), on ``timeout`` and on
  ``idle_timeout``; then kills PID 1 (which destroys the pid namespace and every process in
  it), records the exit status atomically, removes the writable directories and exits.

bwrap keeps the ``--userns2`` descriptor open in the entrypoint (bubblewrap 0.8-0.11 never
closes it); that is the entrypoint's own user namespace, so it grants nothing.
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # linux.py & co. (stdlib only)
import egress  # type: ignore[import-not-found]
import hostview  # type: ignore[import-not-found]
import linux  # type: ignore[import-not-found]
import spare  # type: ignore[import-not-found]
import userns  # type: ignore[import-not-found]
import warm  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Any, NoReturn
else:
    import _signal as signal  # the enum-free core of `signal`: ~4 ms less start-up

STARTUP_TIMEOUT = 20.0
SPARES = 2  # profiles a keeper server keeps a spare keeper for: e.g. with and without egress
LOCK_POLL = 0.5


def _write_result(path: str, kind: str, exitcode: int | None) -> None:
    """Write result.json atomically (hand-made JSON: importing json costs start-up time)."""
    code = "null" if exitcode is None else str(int(exitcode))
    text = f'{{"kind": "{kind}", "exitcode": {code}, "finished_at": {time.time()!r}}}\n'
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _rmtree(path: str) -> None:
    """Remove a directory tree, ignoring errors (shutil is slow to import).

    Directories are made accessible first: overlayfs leaves a mode-000 ``work`` dir behind,
    which only root could otherwise remove.
    """
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            sub = os.path.join(root, name)
            if not os.path.islink(sub):
                try:
                    os.chmod(sub, 0o700)
                except OSError:
                    pass
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            sub = os.path.join(root, name)
            try:
                os.unlink(sub) if os.path.islink(sub) else os.rmdir(sub)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def _has_children(pid: int) -> bool:
    """Whether ``pid`` has forked a child (bwrap's PID 1 forks the entrypoint after set-up)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return bool(f.read().strip())
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return False
    # Kernel without CONFIG_PROC_CHILDREN: scan for a process whose parent is pid.
    return any(name.isdigit() and _parent(int(name)) == pid for name in os.listdir("/proc"))


def _configure(routes: list[tuple[str, int]] | None) -> None:
    egress.bring_up(loopback=False)
    egress.route(routes)


class Keeper:
    def __init__(self, launch: dict[str, Any], prepared: spare.Prepared | None = None) -> None:
        self.launch = launch
        self.prepared = prepared  # walls made ahead (spare.py), if for this profile
        self.start_wall = time.time()
        self.start_mono = time.monotonic()
        self.ready_fd: int | None = launch["ready_fd"]
        self.owner_fd: int | None = launch.get("owner_fd")
        self.owner_lock: str | None = launch.get("owner_lock")
        self.timeout: float = launch["timeout"]
        self.idle_timeout: float | None = launch.get("idle_timeout")
        self.bwrap_pid = 0
        self.bwrap_pidfd = -1
        self.bwrap_status: int | None = None
        self.init_pid = 0
        self.init_pidfd = -1
        self.stop_requested = False
        self.last_seen_active = self.start_wall
        self.mounted: list[str] = []
        self.block_w = -1  # bwrap's --block-fd: the command waits until the network is up
        self.slirp: egress.Slirp | None = None
        self.shape: str | None = None  # a warm sandbox's (warm.py), until it is handed over
        self.spec_w = -1  # a warm sandbox's trampoline waits for its command on this pipe
        self.cover: tuple[str, int] | None = None  # its tmpfs over the state dir (_warm_up)
        self.outputs: list[int] = []  # its unnamed stdout and stderr files

    # --- start-up -------------------------------------------------------------------------

    def report(self, message: dict[str, Any]) -> None:
        """Tell the creator how the start went; and the next spare keeper that it may make its
        walls now (``serve``): not while this sandbox's start needs the machine."""
        started = self.launch.pop("started_fd", None)
        if started is not None:
            os.close(started)
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, marshal.dumps(message))
        except OSError:
            pass
        os.close(self.ready_fd)
        self.ready_fd = None

    def fail_start(self, message: str) -> NoReturn:
        self.report({"error": message})
        self.kill_tree()
        self.cleanup()
        sys.exit(1)

    def build_walls(self, *, adopt: bool = True) -> dict[int, int]:
        """Namespaces, the root, the keyring and the seccomp program; returns the descriptors
        bwrap gets ({number in its argv: our fd}).  A warm sandbox keeps its way back to the
        host's namespaces (``adopt=False``) until it is handed over."""
        launch = self.launch
        walls = launch["walls"]
        profile = spare.profile_of(launch)
        prepared = self.prepared
        if prepared is not None and prepared.profile != profile:
            try:
                prepared.undo()
            except OSError as exc:
                self.fail_start(f"cannot return to the host's namespaces: {exc}")
            prepared = None
        if prepared is None:
            prepared = self.prepared = spare.Prepared(profile)
            try:
                prepared.make()
            except OSError as exc:
                self.fail_start(f"cannot make the sandbox's namespaces: {exc}")
        if adopt:
            prepared.adopt()
        self.slirp = prepared.slirp
        if walls["userns"] == "own":  # not as root (nothing is made ahead then)
            try:
                userns.enter_own(walls["limits"])
                linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE, None)
            except OSError as exc:
                self.fail_start(f"cannot make the sandbox's namespaces: {exc}")
            linux.join_anonymous_keyring()
        view = launch.get("view")
        fds: dict[int, int] = {}
        if view:
            try:
                self.mounted = hostview.build(view)
            except OSError as exc:
                if view.get("copy_fallback"):
                    self.report({"error": str(exc), "overlay_refused": True})
                    self.cleanup()
                    sys.exit(1)
                fix = f". {view['fix']}" if view.get("fix") else ""
                self.fail_start(f"cannot build the sandbox's root file system: {exc}{fix}")
        overlays = launch.get("mount_overlays")
        if overlays:
            try:
                self.mounted += hostview.build_mount_overlays(overlays)
            except OSError as exc:  # the creator copies the mounts instead
                self.report({"error": f"mounts: {exc}", "overlay_refused": True})
                self.cleanup()
                sys.exit(1)
        program = walls.get("seccomp")
        if program:
            read, write = os.pipe2(os.O_CLOEXEC)
            os.write(write, program)  # a few hundred bytes: the pipe holds them
            os.close(write)
            fds[walls["seccomp_fd"]] = read
        if launch.get("net"):
            read, self.block_w = os.pipe2(os.O_CLOEXEC)
            fds[walls["block_fd"]] = read
        if launch.get("warm"):
            read, self.spec_w = os.pipe2(os.O_CLOEXEC)
            fds[warm.SPEC_FD] = read
        return fds

    def spawn(self) -> None:
        self.start()
        self.report(self.started())

    def started(self) -> dict[str, Any]:
        """The report of a sandbox that runs."""
        init_start = _start_time(self.init_pid) if self.init_pidfd >= 0 else None
        return {
            "keeper": [os.getpid(), _start_time(os.getpid())],
            "init": [self.init_pid, init_start] if init_start is not None else None,
            "bwrap": self.bwrap_pid,
        }

    def start(self, *, adopt: bool = True) -> None:
        """Build the walls, run bwrap and wait until its PID 1 has forked the entrypoint."""
        launch = self.launch
        extra = self.build_walls(adopt=adopt)
        info_r, info_w = os.pipe()
        stdin_fd = launch.get("stdin_fd")
        if stdin_fd is None:
            stdin_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(launch["stdout"], flags, 0o644)
        err = os.open(launch["stderr"], flags, 0o644)
        targets = {0: stdin_fd, 1: out, 2: err, 3: info_w, **extra}
        moved = {target: linux.high_fd(fd) for target, fd in targets.items()}
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in moved.items()]
        reset = [signal.SIGPIPE, signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGXFSZ]
        walls = launch["walls"]
        try:
            if walls["userns"] == "pair":  # bwrap runs in U1, made with the walls (userns.py)
                assert self.prepared is not None and self.prepared.launcher is not None
                launcher, self.prepared.launcher = self.prepared.launcher, None
                self.bwrap_pid = launcher.spawn(
                    launch["bwrap_argv"],
                    launch["env"],
                    moved,
                    limits=walls["limits"],
                    userns2_fd=walls["userns2_fd"],
                    default_signals=reset,
                )
            else:
                self.bwrap_pid = os.posix_spawn(
                    launch["bwrap_argv"][0],
                    launch["bwrap_argv"],
                    launch["env"],
                    file_actions=actions,
                    setsigdef=reset,
                    setsigmask=(),
                )
        except OSError as exc:
            self.fail_start(f"cannot run {launch['bwrap_argv'][0]}: {exc}")
        for fd in {*moved.values(), *targets.values()}:
            os.close(fd)  # bwrap has its copies; the keeper holds no end of the sandbox's stdio
        self.bwrap_pidfd = os.pidfd_open(self.bwrap_pid)
        child_pid = self.read_info(info_r)
        os.close(info_r)
        if child_pid is None:
            select.select([self.bwrap_pidfd], [], [], 1.0)  # let it finish its complaint
            self.reap_bwrap(block=False)
            self.fail_start(self.bwrap_error() or "bubblewrap exited before starting the sandbox")
        self.init_pid = child_pid
        try:
            self.init_pidfd = os.pidfd_open(self.init_pid)
        except OSError:
            self.init_pidfd = -1
        if self.init_pidfd >= 0 and _parent(self.init_pid) != self.bwrap_pid:
            os.close(self.init_pidfd)  # PID 1 already gone and its pid reused: never signal it
            self.init_pidfd = -1
        if self.block_w >= 0:
            self.attach_network()
        self.wait_set_up()
        if self.bwrap_status is not None and os.WIFEXITED(self.bwrap_status):
            error = self.bwrap_error() if os.WEXITSTATUS(self.bwrap_status) == 1 else None
            if error:
                self.fail_start(error)
        self.last_seen_active = time.time()  # the idle clock starts when the sandbox runs

    def attach_network(self) -> None:
        """Wait for slirp4netns (started now unless it already was), configure ``eth0`` and
        its routes (the allowlist), then let bwrap run the command."""
        net = self.launch["net"]
        if self.slirp is None:  # not as root: bwrap has made the network namespace
            error = self.in_network_namespace(lambda _: egress.make_device(), None)
            if error:
                self.network_failed(f"cannot make the sandbox's network device: {error}")
            path = f"/proc/{self.init_pid}/ns/net"
            self.slirp = egress.Slirp(net["slirp"], path, as_root=net["as_root"])
            error = self.slirp.wait_ready(spare.NETWORK_TIMEOUT)
            if not error:
                error = self.in_network_namespace(_configure, net.get("routes"))
                error = error and f"cannot configure the sandbox's network: {error}"
        else:  # the keeper is in it already; bwrap has not set up loopback
            assert self.prepared is not None
            error = self.prepared.bring_up_network()
            if not error:
                try:
                    egress.route(net.get("routes"))
                except OSError as exc:
                    error = f"cannot configure the sandbox's network: {exc}"
        if error:
            self.network_failed(error)
        try:
            os.write(self.block_w, b"1")
        except BrokenPipeError:
            pass  # bwrap failed its set-up: wait_set_up reports why
        os.close(self.block_w)
        self.block_w = -1

    def network_failed(self, message: str) -> NoReturn:
        """Fail the start; if bwrap is failing its own set-up (which takes the network
        namespace with it), its complaint is the cause to report."""
        select.select([self.bwrap_pidfd], [], [], 1.0)
        if self.reap_bwrap(block=False):
            self.fail_start(self.bwrap_error() or message)
        self.fail_start(message)

    def in_network_namespace(self, fn: Any, arg: Any) -> str | None:
        """Run ``fn(arg)`` in a forked child that joins the sandbox's network namespace (the
        keeper itself never leaves its own); returns the child's error message, if any."""
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(err_r)
                fd = os.open(f"/proc/{self.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                linux.setns(fd, linux.CLONE_NEWNET)
                fn(arg)
                code = 0
            except BaseException as exc:
                os.write(err_w, str(exc).encode()[:4000])
            os._exit(code)
        os.close(err_w)
        try:
            message = b""
            while chunk := os.read(err_r, 4096):
                message += chunk
        finally:
            os.close(err_r)
        _, status = os.waitpid(pid, 0)
        if status == 0:
            return None
        return message.decode("utf-8", "replace") or f"exit status {status}"

    def read_info(self, fd: int) -> int | None:
        data = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        # bwrap writes {"child-pid": N, ...}; parse just that (json is slow to import).
        key = data.find(b'"child-pid"')
        if key < 0:
            return None
        digits = data[data.index(b":", key) + 1 :].lstrip().split(b",")[0].split(b"}")[0]
        try:
            return int(digits.strip())
        except ValueError:
            return None

    def wait_set_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        delay = 0.0002
        while time.monotonic() < deadline:
            if self.reap_bwrap(block=False):
                return
            if self.init_pidfd < 0 or _has_children(self.init_pid):
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.001)
        self.fail_start("the sandbox did not finish setting up within 20 s")

    def bwrap_lines(self) -> list[str]:
        """bubblewrap's own complaints (``bwrap: ...``), and ours from before its exec
        (``keeper: ...``), from the stderr file."""
        try:
            with open(self.launch["stderr"], "rb") as f:
                text = f.read(8192).decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.startswith(("bwrap: ", "keeper: "))]

    def bwrap_error(self) -> str | None:
        """A set-up failure reported by bubblewrap.  A failed execvp of the entrypoint is not
        one: the sandbox ran and its entrypoint could not start (see ``end_by_exit``)."""
        lines = [line for line in self.bwrap_lines() if not line.startswith("bwrap: execvp ")]
        return "; ".join(lines) if lines else None

    # --- a warm sandbox (warm.py) ----------------------------------------------------------

    def visible(self, path: str) -> str:
        """``path`` as this process reaches it: a warm sandbox's tmpfs covers the state dir
        here until it is handed over; what it covers is reached through a descriptor."""
        if self.cover is not None:
            state, fd = self.cover
            if path.startswith(f"{state}/"):
                return f"/proc/self/fd/{fd}/{path[len(state) + 1 :]}"
        return path

    def uncover(self) -> None:
        if self.cover is not None:
            state, fd = self.cover
            self.cover = None
            try:
                linux.umount(state)
            except OSError:
                pass
            os.close(fd)
        for fd in self.outputs:
            os.close(fd)
        self.outputs = []

    def take(self, launch: dict[str, Any]) -> bool:
        """Serve ``launch`` with this warm sandbox and report it started; False if it cannot
        (another shape, a command the trampoline cannot pass on, the warm sandbox died): then
        nothing of ``launch`` was touched, and the warm sandbox is for :meth:`discard`."""
        spec = warm.encode_spec(launch)
        if self.shape is None or spec is None or warm.shape(launch) != self.shape:
            return False
        assert self.cover is not None
        state, state_fd = self.cover
        if not warm.sandbox_dir(launch).startswith(f"{state}/"):  # (the shape says so)
            return False
        own = self.launch
        old, new = own["view"]["ovl"], launch["view"]["ovl"]
        try:  # what only the warm sandbox sees first: it fails if the sandbox died
            self.set_hostname(warm.hostname(launch))
            with open(f"{own['view']['root']}/etc/hosts", "wb") as f:
                f.write(warm.hosts_data(launch))
            if launch.get("net"):
                egress.route(launch["net"].get("routes"))
            if self.reap_bwrap(block=False) or not _has_children(self.init_pid):
                return False
            # the view (the tmpfs of the upper layers, the root inside it) to the sandbox's dir
            linux.mount(old, self.visible(new), None, linux.MS_MOVE, None)
        except OSError:
            return False
        linked: list[str] = []
        fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # linkat(AT_SYMLINK_FOLLOW) gives an unnamed file its name
            for name, fd in zip(("stdout", "stderr"), self.outputs, strict=True):
                linked.append(launch[name][len(state) + 1 :])
                os.link(str(fd), linked[-1], src_dir_fd=fds, dst_dir_fd=state_fd)
        except OSError:
            for where in linked:
                try:
                    os.unlink(where, dir_fd=state_fd)
                except OSError:
                    pass
            try:
                linux.mount(self.visible(new), old, None, linux.MS_MOVE, None)
            except OSError:
                pass  # discard ends it where it is
            return False
        finally:
            os.close(fds)
        self.mounted = [new + path[len(old) :] for path in self.mounted]
        self.launch = launch
        self.ready_fd, self.owner_fd = launch["ready_fd"], launch.get("owner_fd")
        self.owner_lock = launch.get("owner_lock")
        self.timeout, self.idle_timeout = launch["timeout"], launch.get("idle_timeout")
        self.start_wall, self.start_mono = time.time(), time.monotonic()
        self.shape = None
        assert self.prepared is not None
        self.prepared.adopt()
        try:
            os.write(self.spec_w, spec)  # at most what a pipe holds (warm.SPEC_MAX): no wait
        except OSError:
            pass  # it died just now: the keeper sees bwrap exit, as for any sandbox
        os.close(self.spec_w)
        self.spec_w = -1
        self.last_seen_active = time.time()
        self.report({**self.started(), "ahead": True})
        self.uncover()  # once the creator has its sandbox: an unmount waits for RCU
        return True

    def set_hostname(self, name: str) -> None:
        """Set the sandbox's host name from outside (a warm sandbox got a stand-in)."""
        import socket

        own = os.open("/proc/self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        theirs = os.open(f"/proc/{self.init_pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(theirs, linux.CLONE_NEWUTS)
            try:
                socket.sethostname(name)
            finally:
                linux.setns(own, linux.CLONE_NEWUTS)
        finally:
            os.close(own)
            os.close(theirs)

    def discard(self) -> None:
        """End a warm sandbox that will serve nobody: its processes, its mounts; back to the
        host's namespaces."""
        self.kill_tree()
        if self.spec_w >= 0:
            os.close(self.spec_w)
            self.spec_w = -1
        self.cleanup()
        self.uncover()
        if self.prepared is not None:
            try:
                self.prepared.undo()
            except OSError:
                pass
            self.prepared = None

    # --- running ---------------------------------------------------------------------------

    def reap_bwrap(self, *, block: bool) -> bool:
        """Collect bwrap's exit status; True once it has exited."""
        if self.bwrap_status is not None:
            return True
        if not self.bwrap_pid:
            return True
        try:
            pid, status = os.waitpid(self.bwrap_pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.bwrap_status = 0
            return True
        if pid == 0:
            return False
        self.bwrap_status = status
        return True

    def detached(self) -> bool:
        return os.path.exists(self.launch["detached"])

    def owner_lock_free(self) -> bool:
        """True when nobody holds the owner lock exclusively (the owner is gone)."""
        assert self.owner_lock is not None
        try:
            fd = os.open(self.owner_lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        finally:
            os.close(fd)  # also drops the shared lock we may just have taken
        return True

    def any_activity_held(self) -> bool:
        """Whether some process holds an activity token (a locked file in the activity dir)."""
        directory = self.launch["activity_dir"]
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return False
        held = False
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(".tmp-"):
                try:
                    if time.time() - os.stat(path).st_mtime > 10:
                        os.unlink(path)  # creator died before publishing it
                except OSError:
                    pass
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                held = True
            else:
                # Unlocked: its holder died without releasing it; it was active until now.
                self.last_seen_active = time.time()
                try:
                    os.unlink(path)
                except OSError:
                    pass
            finally:
                os.close(fd)
        return held

    def idle_remaining(self) -> float:
        """Seconds until the idle timeout fires, re-reading the activity state when due."""
        assert self.idle_timeout is not None
        try:
            touched = os.stat(self.launch["last_activity"]).st_mtime
        except OSError:
            touched = 0.0
        now = time.time()
        remaining = max(self.last_seen_active, touched) + self.idle_timeout - now
        if remaining > 0:
            return remaining
        if self.any_activity_held():
            # Releasing a token touches last_activity, which re-arms the check then.
            self.last_seen_active = now
            return self.idle_timeout
        return max(self.last_seen_active, touched) + self.idle_timeout - now

    def run(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self.bwrap_pidfd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        if self.owner_fd is not None:
            poller.register(self.owner_fd, select.POLLIN)
        deadline = self.start_mono + self.timeout
        next_lock_check = time.monotonic() + LOCK_POLL
        while True:
            if self.reap_bwrap(block=False):
                return self.end_by_exit()
            if self.stop_requested:
                return self.end("terminated")
            now = time.monotonic()
            if now >= deadline:
                return self.end("timeout")
            wait = deadline - now
            if self.owner_lock is not None:
                if now >= next_lock_check:
                    if self.owner_lock_free() and not self.detached():
                        return self.end("terminated")
                    next_lock_check = now + LOCK_POLL
                wait = min(wait, next_lock_check - now)
            if self.idle_timeout is not None:
                idle = self.idle_remaining()
                if idle <= 0:
                    return self.end("idle_timeout")
                wait = min(wait, idle)
            for fd, _ in poller.poll(max(1, int(wait * 1000) + 1)):
                if fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif fd == self.owner_fd:
                    try:
                        data = os.read(fd, 512)
                    except OSError:
                        data = b""
                    if not data:
                        poller.unregister(fd)
                        os.close(fd)
                        self.owner_fd = None
                        if not self.detached():
                            return self.end("terminated")

    # --- the end ---------------------------------------------------------------------------

    def kill_tree(self) -> None:
        """Kill PID 1 (the kernel then kills the whole pid namespace), bwrap and slirp4netns;
        reap them."""
        if self.slirp is not None:  # first, so that its exit overlaps the sandbox's
            self.slirp.stop()
        if self.init_pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
            except OSError:
                pass
            # bwrap reaps PID 1 and then exits by itself; killing bwrap first would orphan
            # PID 1's zombie to the host's init, which may never reap it.
            select.select([self.bwrap_pidfd], [], [], 2.0)
        if self.bwrap_pid and self.bwrap_status is None and not self.reap_bwrap(block=False):
            try:
                os.kill(self.bwrap_pid, signal.SIGKILL)  # our unreaped child: pid is stable
            except OSError:
                pass
            self.reap_bwrap(block=True)
        if self.init_pidfd >= 0:
            select.select([self.init_pidfd], [], [], 5.0)
            os.close(self.init_pidfd)
            self.init_pidfd = -1
        if self.block_w >= 0:  # after the kill: on EOF bwrap would run the command
            os.close(self.block_w)
            self.block_w = -1
        if self.slirp is not None:
            self.slirp.reap()
            if self.prepared is not None and self.prepared.slirp is self.slirp:
                self.prepared.slirp = None  # (a warm sandbox's walls are undone after this)
            self.slirp = None
        if self.prepared is not None and self.prepared.launcher is not None:
            self.prepared.launcher.discard()  # bwrap never ran
            self.prepared.launcher = None

    def end_by_exit(self) -> None:
        status = self.bwrap_status or 0
        signalled = os.WIFSIGNALED(status)
        code = 128 + os.WTERMSIG(status) if signalled else os.WEXITSTATUS(status)
        if code == 1:
            # bwrap exits 1 when it cannot execvp the entrypoint; report what a shell would.
            for line in self.bwrap_lines():
                if line.startswith("bwrap: execvp "):
                    code = 127 if line.endswith("No such file or directory") else 126
        self.end("success" if code == 0 else "failure", code)

    def end(self, kind: str, exitcode: int | None = None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        self.kill_tree()
        _write_result(self.launch["result"], kind, exitcode)
        self.cleanup()

    def cleanup(self) -> None:
        # Unmount before removing anything: below the root's mount point is the host's tree.
        # A lazy unmount detaches everything below its point too: one per outermost point
        # (each waits for an RCU grace period).
        view = self.launch.get("view") or {}
        points = [p for p in [*self.mounted, view.get("root"), view.get("ovl")] if p]
        for target in reversed(points):
            if not any(target.startswith(f"{other}/") for other in points):
                try:
                    linux.umount(target)
                except OSError:
                    pass
        self.mounted = []
        for path in self.launch.get("cleanup", []):
            _rmtree(path)


FD_NAMES = ("ready_fd", "owner_fd", "stdin_fd", "started_fd")


def run_keeper(
    launch_path: str,
    fds: dict[str, int],
    prepared: spare.Prepared | None = None,
    ahead: Keeper | None = None,
) -> None:
    """Be the keeper of the sandbox whose launch record is ``launch_path``; ``fds`` are the
    creator's pipe ends as received (``FD_NAMES``), ``prepared`` the walls made ahead, or
    ``ahead`` a warm sandbox (``warm.py``).  Returns once the sandbox has ended."""
    with open(ahead.visible(launch_path) if ahead else launch_path, "rb") as f:
        launch = marshal.load(f)
    launch.update(fds)
    for key in FD_NAMES:
        if launch.get(key) is not None:
            os.set_inheritable(launch[key], False)  # bwrap and the sandbox must not hold them
    if ahead is not None and ahead.take(launch):
        keeper = ahead
    else:
        if ahead is not None:
            ahead.discard()
            prepared = None
        keeper = Keeper(launch, prepared)

    def stop(signum: int, frame: object) -> None:
        keeper.stop_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if keeper is not ahead:
        keeper.spawn()
    keeper.run()


def _warm_up(template: dict[str, Any], shape: str, prepared: spare.Prepared) -> Keeper | None:
    """Start a sandbox shaped like the launch ``template`` (of :func:`warm.shape` ``shape``)
    with the walls ``prepared`` (``warm.py``); None if none can be (then ``prepared`` is
    undone if the attempt used it: check ``prepared.complete()``).

    Its files live on a tmpfs mounted over the state dir in this process's mount namespace
    only (nothing of it is seen on the host, nothing is left if it is killed), its output
    files are unnamed files in the state dir, linked to their names when it is handed
    over."""
    if warm.trampoline() is None:
        return None
    state = os.path.dirname(warm.sandbox_dir(template))
    launch = warm.shaped_like(template, state)
    held: list[int] = []
    covered = False
    try:
        held.append(os.open(state, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for _ in range(2):
            flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
            held.append(os.open(f"/proc/self/fd/{held[0]}", flags, 0o644))
        linux.mount("tmpfs", state, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=700")
        covered = True
        os.mkdir(launch["view"]["ovl"], 0o700)
    except OSError:
        if covered:
            linux.umount(state)
        for fd in held:
            os.close(fd)
        return None
    state_fd, outputs = held[0], held[1:]
    launch["stdout"], launch["stderr"] = (f"/proc/self/fd/{fd}" for fd in outputs)
    keeper = Keeper(launch, prepared)
    keeper.cover, keeper.outputs = (state, state_fd), outputs
    try:
        keeper.start(adopt=False)
    except (OSError, SystemExit):  # fail_start has ended what it started; else end it here
        keeper.kill_tree()
        keeper.cleanup()
        keeper.uncover()
        try:
            prepared.undo()
        except OSError:
            pass
        return None
    keeper.shape = shape
    return keeper


def _set_title(text: str) -> None:
    """Show ``text`` as this process's command line (``ps``, /proc/<pid>/cmdline): written over
    the argument area inherited from the server, which was padded for it."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat 48, 49)
        data = text.encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b"\0" * (end - start - len(data)))
    except (OSError, IndexError, ValueError):
        pass  # a title is a convenience


def serve(sock_fd: int) -> None:
    """The keeper server of one creating process: for each request (a launch record's path,
    with the creator's pipe ends and the keeper log as SCM_RIGHTS) hand the sandbox to the
    spare keeper of its profile, answer its pid, and fork the next spare for that profile
    (``spare.py``; it starts a sandbox ahead once two in a row had the same shape,
    ``warm.py``), keeping spares for the last ``SPARES`` profiles.  A forked keeper shares
    the server's memory (copy-on-write); every keeper is a process of its own, in a session of
    its own, bwrap's parent, with its own ties to its owner, so nothing about how sandboxes end
    depends on the server.  Exits when the creator closes its end (the creator is gone), and
    so do the spares; the keepers live on until their sandboxes end.  Answers 0 when no
    keeper could be started."""
    import socket

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the keepers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = socket.socket(fileno=sock_fd)
    ahead: dict[str, _Spare] = {}  # a spare for each of the last SPARES profiles asked for
    shapes: dict[str, str | None] = {}  # the shape of the last launch of each (warm.py)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 65536, 8, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        if not message:
            return
        if message.startswith(b"\0release\0"):  # forkserver.release
            _release(ahead, os.fsdecode(message[len(b"\0release\0") :]))
            for fd in fds:
                os.close(fd)
            try:
                sock.send(b"1")
            except OSError:
                return
            continue
        # "<launch record>\0<fd names>\0<profile>": the keeper gets the first two, and the
        # name of one more descriptor, which it closes once its sandbox runs (the next spare
        # waits for that).
        path, names, profile_bytes = [*message.split(b"\0", 2), b"", b""][:3]
        profile = profile_bytes.decode()
        started, started_w = os.pipe2(os.O_CLOEXEC)
        message = path + b"\0" + b",".join([*filter(None, names.split(b",")), b"started_fd"])
        pid = 0
        for _ in range(2):  # a spare that died meanwhile is replaced once
            keeper = ahead.pop(profile, None)
            if keeper is None:
                held = [sock.fileno(), *_socks(ahead), *fds, started, started_w]
                keeper = _Spare(profile, held)
            pid = keeper.hand(message, [*fds, started_w])
            if pid:
                break
        for fd in [*fds, started_w]:
            os.close(fd)  # before the next fork: no other keeper may hold this sandbox's pipes
        try:
            sock.send(str(pid).encode())
        except OSError:
            return
        # A sandbox is started ahead once two in a row had its shape: one of another shape
        # would find the spare's walls used by it, and pay for them and for its end.
        launch = _load(path.decode())
        shape = _shape_of(launch)
        template = None
        if launch is not None and shape is not None and shapes.get(profile) == shape:
            template = (path.decode(), launch, shape)
        shapes[profile] = shape
        held = [sock.fileno(), *_socks(ahead)]
        ahead[profile] = _Spare(profile, held, after=started, template=template)
        os.close(started)
        while len(ahead) > SPARES:
            gone = next(iter(ahead))
            ahead.pop(gone).sock.close()  # it exits, undoing its walls
            shapes.pop(gone, None)


def _load(launch_path: str) -> dict[str, Any] | None:
    """A launch record, or None if it is gone (its sandbox's dir was removed) or unreadable."""
    try:
        with open(launch_path, "rb") as f:
            launch = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return launch if isinstance(launch, dict) else None


def _shape_of(launch: dict[str, Any] | None) -> str | None:
    try:
        return warm.shape(launch) if launch is not None else None
    except (KeyError, TypeError, ValueError, IndexError):  # not a launch record of ours
        return None


def _release(spares: dict[str, _Spare], state: str) -> None:
    """End the spares that started a sandbox ahead in ``state`` and wait for them to exit."""
    ending = []
    for profile, ahead in list(spares.items()):
        if ahead.template.startswith(f"{state.rstrip('/')}/"):
            del spares[profile]
            try:
                ending.append(os.pidfd_open(ahead.pid))
            except OSError:
                pass
            ahead.sock.close()  # it ends its sandbox and exits
    deadline = time.monotonic() + 10.0
    for fd in ending:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        os.close(fd)


def _socks(spares: dict[str, _Spare]) -> list[int]:
    return [spare.sock.fileno() for spare in spares.values()]


class _Spare:
    """A keeper forked ahead of its sandbox: it makes the walls of ``profile`` and waits on a
    socket of its own for its launch record (:func:`_spare_main`); ``held`` are the server's
    descriptors, which it closes (a copy of another spare's socket would keep that one from
    seeing the server go; a sandbox's pipe end, its keeper from seeing the owner go), and
    ``after`` turns readable once the keeper before it has started its sandbox; ``template``
    is that sandbox's launch record (its path, its contents, its shape) when the spare is to
    start a sandbox shaped like it (``warm.py``)."""

    def __init__(
        self,
        profile: str,
        held: list[int],
        after: int = -1,
        template: tuple[str, dict[str, Any], str] | None = None,
    ) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                for fd in held:
                    os.close(fd)
                code = _spare_main(theirs, profile, after, template)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = ours
        self.template = template[0] if template else ""  # its path: release() goes by it

    def hand(self, message: bytes, fds: list[int]) -> int:
        """Give it its sandbox; its pid, or 0 if it has died."""
        import socket

        try:
            socket.send_fds(self.sock, [message], fds)
        except OSError:
            return 0
        finally:
            self.sock.close()
        return self.pid


def _spare_main(
    sock: Any, profile: str, after: int, template: tuple[str, dict[str, Any], str] | None
) -> int:
    import socket

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    _set_title("pms-keeper (spare)")
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 2)  # its sandbox's keeper log comes with the sandbox
    os.close(null)
    if after >= 0:  # not while the sandbox before it starts, unless its own is waiting
        select.select([sock, after], [], [])
        os.close(after)
    made = spare.Prepared(profile)
    try:
        made.make(ahead=True)
    except OSError:  # the keeper makes them itself, and reports why it cannot
        made.undo()
    prepared = made if made.complete() else None
    ahead = None
    if prepared is not None and template is not None:
        ahead = _warm_up(template[1], template[2], prepared)
    if prepared is not None and not prepared.complete():
        prepared = None  # used by a warm start that failed (and undone)
    network = prepared.ready_fd() if prepared is not None and ahead is None else -1
    while network >= 0 and sock not in select.select([sock, network], [], [])[0]:
        assert prepared is not None
        prepared.bring_up_network()  # a failure is reported when the sandbox starts
        network = -1
    message, fds, _, _ = socket.recv_fds(sock, 65536, 8, socket.MSG_CMSG_CLOEXEC)
    sock.close()
    if not message:  # the server is gone: no sandbox will come
        if ahead is not None:
            ahead.discard()
        elif prepared is not None:
            prepared.undo()
        return 0
    path, _, names = message.decode().partition("\0")
    named = dict(zip(["log_fd", *names.split(",")] if names else ["log_fd"], fds, strict=False))
    os.dup2(named.pop("log_fd"), 2)
    _set_title(f"pms-keeper {path}")
    run_keeper(path, named, prepared, ahead)
    return 0


if __name__ == "__main__":
    serve(int(sys.argv[2]))
