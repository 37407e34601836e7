"""A process identity that survives PID reuse: ``(pid, start_ticks, boot_id)``.

A PID alone names whichever process holds that number *now*; a PID recorded yesterday may belong
to a stranger today. The kernel's start time of the process, in clock ticks since boot (field 22
of ``/proc/<pid>/stat``), plus the boot id, names one process for good. psutil uses the same
monotonic start time internally; we do not persist its float ``create_time()`` because that moves
with the wall clock.

Both the store (children and session owners are recorded with their identity) and the process
layer (which re-checks it before every signal) use this module, so it lives at the top of the
package rather than under ``process/``.
"""

from __future__ import annotations

import enum
import os
import sys
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from . import _exports
from ._proc import ProcessUnreadableError, read_stat, settled_argv
from .errors import ProcessNotFoundError, UnsafeSignalError

__all__ = [
    "IdentityStatus",
    "ProcessIdentity",
    "ProcessInfo",
    "boot_id",
    "check_signal_target",
    "hostname",
    "read_process_info",
]

_LINUX = sys.platform.startswith("linux")  # boot_id is Linux's; elsewhere the boot time


class IdentityStatus(str, enum.Enum):
    """What a recorded identity refers to now."""

    ALIVE = "alive"
    ZOMBIE = "zombie"  # exited, not yet reaped: it can never run again
    GONE = "gone"  # no process with that pid
    REUSED = "reused"  # the pid now belongs to a different process
    OTHER_BOOT = "other_boot"  # recorded before the last reboot
    UNKNOWN = "unknown"  # could not be read (permissions, another pid namespace): fail closed


@lru_cache(maxsize=1)
def boot_id() -> str:
    """Return this boot's id (Linux ``boot_id``; elsewhere the boot time in whole seconds)."""
    if _LINUX:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                return f.read().strip()
        except OSError:
            pass
    import psutil  # only off Linux; imported here so ``import sessionstore`` stays light

    return f"boot-{int(psutil.boot_time())}"


@lru_cache(maxsize=1)
def hostname() -> str:
    """Return this machine's host name (``socket.gethostname()``'s answer).

    Read from ``uname``, where the C library's ``gethostname`` reads it on Linux: the same
    text (``tests/test_identity.py`` checks that they agree), without importing ``socket``,
    about 2 ms of the first write's start-up. Rejected: ``socket.gethostname()`` itself, for
    that import only.
    """
    return os.uname().nodename


class ProcessInfo(BaseModel):
    """One read of a process: its identity plus what a human needs to recognise it."""

    model_config = ConfigDict(frozen=True)

    pid: int
    start_ticks: int
    ppid: int
    pgid: int
    state: str  # one-letter kernel state: R, S, D, Z, T, X, ...
    argv: list[str] = Field(default_factory=list)


def read_process_info(pid: int) -> ProcessInfo | None:
    """Read a process's identity, parent, group, state and argv.

    The command line is read after any ``execve`` in progress has filled it in (see
    :func:`~sessionstore._proc.settled_argv`); it is ``[]`` only when it cannot be known (a
    zombie, an unreadable process, an exec that did not settle in time).

    Args:
        pid: the process to read.

    Returns:
        The info, or None when no process has that pid.

    Raises:
        PermissionError: the process exists but cannot be read (``ProcessUnreadableError``).
    """
    stat = read_stat(pid)
    if stat is None:
        return None
    argv = [] if stat.finished else settled_argv(pid)
    return ProcessInfo(
        pid=pid,
        start_ticks=stat.start_ticks,
        ppid=stat.ppid,
        pgid=stat.pgid,
        state=stat.state,
        argv=argv or [],
    )


class ProcessIdentity(BaseModel):
    """``(pid, start_ticks, boot_id)``: one process, for good, whatever its PID holds later."""

    model_config = ConfigDict(frozen=True)

    pid: int = Field(gt=0)
    start_ticks: int = Field(ge=0)
    boot_id: str = Field(min_length=1)

    @classmethod
    def capture(cls, pid: int) -> ProcessIdentity:
        """Read the identity of the process that holds ``pid`` now.

        Raises:
            ProcessLookupError: no process has that pid.
            PermissionError: the process cannot be read.
        """
        info = read_stat(pid)
        if info is None:
            raise ProcessNotFoundError(pid)
        return cls(pid=pid, start_ticks=info.start_ticks, boot_id=boot_id())

    @classmethod
    def current(cls) -> ProcessIdentity:
        """Return the identity of this process."""
        return cls.capture(os.getpid())

    def check(self) -> IdentityStatus:
        """Say what this identity refers to now; UNKNOWN when it cannot tell (fail closed)."""
        if self.boot_id != boot_id():
            return IdentityStatus.OTHER_BOOT
        try:
            info = read_stat(self.pid)
        except ProcessUnreadableError:
            return IdentityStatus.UNKNOWN
        if info is None:
            return IdentityStatus.GONE
        if info.start_ticks != self.start_ticks:
            return IdentityStatus.REUSED
        if info.state in ("Z", "X"):
            return IdentityStatus.ZOMBIE
        return IdentityStatus.ALIVE

    def is_alive(self) -> bool:
        """True only when this very process is still running (a zombie is not)."""
        return self.check() is IdentityStatus.ALIVE


_PID_MAX_LIMIT = 4_194_304  # the kernel's ceiling for pid_max on 64-bit Linux
_pid_max_seen = 0  # read on first use


def _pid_max(pid: int) -> int:
    """The kernel's pid_max, read again only when ``pid`` is above the value last read."""
    global _pid_max_seen
    if pid > _pid_max_seen:
        try:
            with open("/proc/sys/kernel/pid_max", "rb") as f:
                _pid_max_seen = int(f.read())
        except (OSError, ValueError):
            _pid_max_seen = _PID_MAX_LIMIT  # no procfs (macOS): only the hard ceiling
    return _pid_max_seen


def check_signal_target(pid: int, *, pgid: int | None = None) -> None:
    """Refuse PIDs (and process groups) that must never be signalled.

    Args:
        pid: the process about to be signalled or tracked.
        pgid: when a whole process group is about to be signalled, its id.

    Raises:
        UnsafeSignalError: ``pid`` is <= 1, above the kernel's pid_max, or our own pid, or
            ``pgid`` is <= 1 or our own group (a ``ValueError``).
        TypeError: ``pid`` is not an int.
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 1:
        raise UnsafeSignalError(pid, "pid <= 1 names init or every process")
    if pid > _pid_max(pid):
        raise UnsafeSignalError(pid, f"above pid_max ({_pid_max(pid)}): no process can have it")
    if pid == os.getpid():
        raise UnsafeSignalError(pid, "that is this process")
    if pgid is not None and (pgid <= 1 or pgid == os.getpgrp()):
        raise UnsafeSignalError(pid, f"process group {pgid} is this process's own group")


_exports.publish_written_here(__name__)  # last: see _exports
