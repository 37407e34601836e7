"""The cgroup tier: the session's children in a cgroup v2 of their own (systemd's control group).

A cgroup is the only enumeration that is complete without racing anything: every process forked
inside it stays inside, whatever it does to its session, group, parent or environment;
``cgroup.freeze`` stops all of them at once, ``cgroup.kill`` SIGKILLs all of them at once, and
``cgroup.events`` says ``populated 0`` when none is left.

Used only where it works, checked at run time: a cgroup2 hierarchy is mounted (pure v2 at
``/sys/fs/cgroup``, or the hybrid ``/sys/fs/cgroup/unified``), this process may create a child of
its own cgroup and move itself in and out (root, or a delegated subtree), its own cgroup has no
controllers enabled for its children (else it could not hold processes itself, and could not move
back), and the kernel has ``cgroup.kill`` (Linux 5.14).

How a child gets in, race-free: Python's ``subprocess`` cannot start a child inside a cgroup
(``clone3(CLONE_INTO_CGROUP)`` is not exposed; ``preexec_fn`` is not safe with threads; moving
the child after ``Popen`` returns leaves a window in which it can fork outside). So this process
moves itself into the session cgroup for the ``Popen`` call and back right after, under a lock:
the child is forked inside. The price, documented: a process another thread of this process
forks during that window (milliseconds) starts inside the session cgroup too, and is ended with
the session's children.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .._identity import IdentityStatus, ProcessIdentity, boot_id
from .._proc import LINUX, ProcessUnreadableError, read_cgroup

__all__ = ["CgroupMoveError", "SessionCgroup", "cgroup_name", "cgroup_unavailable", "left_behind"]

_PREFIX = "sessionstore-"

T = TypeVar("T")

_MOVE_LOCK = threading.Lock()  # one process-wide: moving ourselves is a process-wide act


class CgroupMoveError(OSError):
    """This process could not move itself into the session cgroup; nothing was started."""


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def _own_cgroup(mount: str) -> str | None:
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.join(mount, line[3:].strip().lstrip("/"))
    except OSError:
        return None
    return None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def cgroup_name(session_id: str, owner_pid: int, owner_start_ticks: int) -> str:
    """The cgroup directory name for one owner process's children of one session."""
    return f"{_PREFIX}{session_id}-{owner_pid}-{owner_start_ticks}"


def left_behind() -> dict[str, list[tuple[SessionCgroup, int, int]]]:
    """Session cgroups anywhere in the hierarchy: ``{session id: [(cgroup, owner pid, ticks)]}``.

    For the reaper: an owner that died without shutting down leaves its cgroup (and whatever is
    still in it) behind, wherever its own cgroup was.
    """
    found: dict[str, list[tuple[SessionCgroup, int, int]]] = {}
    mount = _cgroup2_mount() if LINUX else None
    if mount is None:
        return found
    for root, dirs, _files in os.walk(mount):
        for name in list(dirs):
            if not name.startswith(_PREFIX):
                continue
            dirs.remove(name)  # a session cgroup's own children belong to it
            try:
                sid, pid_s, ticks_s = name[len(_PREFIX) :].rsplit("-", 2)
                owner = (int(pid_s), int(ticks_s))
            except ValueError:
                continue
            found.setdefault(sid, []).append((SessionCgroup(os.path.join(root, name)), *owner))
    return found


def _collect_empty(home: str) -> None:
    """Remove empty session cgroups beside ours whose owner is dead (SIGKILLed, never reaped).

    ``rmdir`` succeeds only on an empty cgroup, so nothing that still holds a process is
    touched; those stay for ``reap``.
    """
    try:
        names = [n for n in os.listdir(home) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        try:
            _sid, pid_s, ticks_s = name[len(_PREFIX) :].rsplit("-", 2)
            owner = ProcessIdentity(pid=int(pid_s), start_ticks=int(ticks_s), boot_id=boot_id())
        except ValueError:
            continue
        if owner.check() in (IdentityStatus.GONE, IdentityStatus.REUSED, IdentityStatus.ZOMBIE):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(home, name))


def cgroup_unavailable() -> str | None:
    """Why the cgroup tier cannot be used here; None when it can (checked, not assumed)."""
    if not LINUX:
        return "not Linux"
    mount = _cgroup2_mount()
    if mount is None:
        return "no cgroup2 hierarchy mounted"
    home = _own_cgroup(mount)
    if home is None or not os.path.isdir(home):
        return "this process's cgroup2 is not visible"
    try:
        if _read(os.path.join(home, "cgroup.subtree_control")).strip() and home != mount:
            return "this process's cgroup distributes controllers, so it cannot hold children"
    except OSError as err:
        return f"cannot read cgroup.subtree_control: {err.strerror}"
    if not os.access(os.path.join(home, "cgroup.procs"), os.W_OK) or not os.access(home, os.W_OK):
        return "this process's cgroup is not writable (not root, no delegation)"
    return None


class SessionCgroup:
    """One cgroup for one layer's children: created, filled through :meth:`spawn`, ended, removed.

    Attributes:
        path: the cgroup directory.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str) -> SessionCgroup:
        """Create the cgroup ``name`` below this process's own and check it works.

        Raises:
            OSError: it cannot be created or used (the caller falls back and says why).
        """
        why = cgroup_unavailable()
        if why is not None:
            raise OSError(why)
        mount = _cgroup2_mount()
        assert mount is not None
        home = _own_cgroup(mount)
        assert home is not None
        _collect_empty(home)
        path = os.path.join(home, name)
        os.mkdir(path)
        cg = cls(path)
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            cg.remove()
            raise OSError("the kernel has no cgroup.kill (Linux < 5.14)")
        return cg

    def spawn(self, start: Callable[[], T]) -> T:
        """Run ``start`` (a ``Popen``) with this process inside the cgroup, then move back.

        Raises:
            CgroupMoveError: moving in failed; ``start`` did not run.
            Exception: whatever ``start`` raises (this process is back home first).
        """
        with _MOVE_LOCK:
            mount = _cgroup2_mount()
            home = None if mount is None else _own_cgroup(mount)
            if home is None:
                raise CgroupMoveError("this process's cgroup2 is not visible")
            me = str(os.getpid())
            try:
                _write(os.path.join(self.path, "cgroup.procs"), me)
            except OSError as err:
                raise CgroupMoveError(f"cannot move into {self.path}: {err.strerror}") from err
            try:
                return start()
            finally:
                _write(os.path.join(home, "cgroup.procs"), me)

    def pids(self) -> list[int]:
        """Every process in the cgroup and below it."""
        found: list[int] = []
        for root, _dirs, files in os.walk(self.path):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    found.extend(int(x) for x in _read(os.path.join(root, "cgroup.procs")).split())
        return found

    def _events(self) -> dict[str, str]:
        out = {}
        for line in _read(os.path.join(self.path, "cgroup.events")).splitlines():
            key, _, value = line.partition(" ")
            out[key] = value
        return out

    def contains(self, pid: int) -> bool:
        """True when process ``pid`` is in this cgroup or below it (read from ``/proc``)."""
        mount = _cgroup2_mount()
        if mount is None:
            return False
        try:
            where = read_cgroup(pid)
        except ProcessUnreadableError:
            return False
        if where is None:
            return False
        path = os.path.join(mount, where.lstrip("/"))
        return path == self.path or path.startswith(self.path + os.sep)

    def populated(self) -> bool:
        """True while any process is in the cgroup (or below it)."""
        return self._events().get("populated") != "0"

    def freeze(self, deadline: float) -> bool:
        """Freeze every process in the cgroup; True once the kernel says it is frozen."""
        _write(os.path.join(self.path, "cgroup.freeze"), "1")
        return self._wait_event("frozen", "1", deadline)

    def thaw(self) -> None:
        """Let the cgroup's processes run again."""
        _write(os.path.join(self.path, "cgroup.freeze"), "0")

    def kill(self) -> bool:
        """SIGKILL every process in the cgroup and below it at once (frozen ones too).

        Returns:
            False, having sent nothing, when this very process is inside (a move back that
            failed): ``cgroup.kill`` would end the orchestrator itself.
        """
        if os.getpid() in self.pids():
            return False
        _write(os.path.join(self.path, "cgroup.kill"), "1")
        return True

    def wait_empty(self, deadline: float) -> bool:
        """Wait until no process is left (``populated 0``) or the deadline passes."""
        return self._wait_event("populated", "0", deadline)

    def _wait_event(self, key: str, value: str, deadline: float) -> bool:
        # cgroup.events raises POLLPRI on every change: an event to wait on, not a sleep.
        fd = os.open(os.path.join(self.path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                if self._events().get(key) == value:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(min(left, 1.0) * 1000)
        finally:
            os.close(fd)

    def remove(self) -> bool:
        """Remove the cgroup once empty (idempotent); False when processes are still in it."""
        for root, dirs, _files in os.walk(self.path, topdown=False):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, d))
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<SessionCgroup {self.path!r}>"
