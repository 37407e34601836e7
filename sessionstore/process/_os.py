"""The operating-system calls the process layer makes, with their fallbacks, in one place.

Linux first: pidfds (``os.pidfd_open``, ``signal.pidfd_send_signal``, ``os.waitid(P_PIDFD)``),
``prctl`` (through ctypes) for the child subreaper. Elsewhere callers are told (``HAVE_PIDFD``)
that waits must poll. What the OS *says* about a process (``/proc``) is read in
:mod:`sessionstore._proc`, the one reader with the one error policy.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import signal
import sys
import threading
from functools import lru_cache
from typing import NoReturn

__all__ = [
    "HAVE_PIDFD",
    "LINUX",
    "exit_by_signal",
    "fd_readable",
    "is_child_subreaper",
    "open_pidfd",
    "pidfd_group_signal",
    "set_child_subreaper",
    "waitid_pidfd",
]

from .._proc import LINUX

HAVE_PIDFD = LINUX and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# include/uapi/linux/pidfd.h: signal the whole process group of the pidfd's process (Linux 6.9).
_PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2
_group_signal_supported = True


def open_pidfd(pid: int) -> int | None:
    """Open a pidfd for ``pid``; None when pidfds are unavailable (old kernel, EMFILE, seccomp).

    Raises:
        ProcessLookupError: no process has that pid.
    """
    if not HAVE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise ProcessLookupError(pid, "no such process") from err
        return None


def fd_readable(fd: int) -> bool:
    """True when ``fd`` polls readable now (a pidfd: the process has exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def pidfd_group_signal(pidfd: int, sig: int) -> bool | None:
    """Signal the process group of the pidfd's process through the pidfd (Linux >= 6.9).

    The pidfd pins the kernel's ``struct pid``, so this reaches exactly the original group's
    members even after the leader was reaped and its number reused: no pgid-recycling race.

    Returns:
        True when delivered, False when the group is empty, None when the kernel does not
        support it (the caller falls back to a guarded ``os.killpg``).
    """
    global _group_signal_supported
    if not _group_signal_supported:
        return None
    try:
        signal.pidfd_send_signal(pidfd, sig, None, _PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        return False
    except OSError as err:
        if err.errno == errno.EINVAL:
            _group_signal_supported = False
            return None
        if err.errno == errno.ESRCH:
            return False
        raise
    return True


def waitid_pidfd(pidfd: int, *, reap: bool) -> int | None:
    """Collect the exit status of our own child through its pidfd, without blocking.

    ``reap=False`` (``WNOWAIT``) reads the status and leaves the zombie for its real owner: used
    for processes we did not start, so we never steal an exit status.

    Returns:
        The status in ``Popen.returncode`` form (``-N`` for death by signal N), or None when it
        has not exited or is not our child.
    """
    if not HAVE_PIDFD:
        return None
    flags = os.WEXITED | os.WNOHANG | (0 if reap else os.WNOWAIT)
    try:
        result = os.waitid(os.P_PIDFD, pidfd, flags)
    except (ChildProcessError, OSError):
        return None
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return int(result.si_status)
    return -int(result.si_status)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def set_child_subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or stop being one). Linux only.

    A subreaper adopts orphaned descendants (a grandchild that ``setsid``s and loses its parent)
    instead of init, so shutdown can still find, end and reap them.

    Returns:
        True when the setting was applied.
    """
    libc = _libc() if LINUX else None
    if libc is None:
        return False
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)) == 0


def is_child_subreaper() -> bool:
    """True when this process is a child subreaper."""
    libc = _libc() if LINUX else None
    if libc is None:
        return False
    value = ctypes.c_int(0)
    if int(libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)) != 0:
        return False
    return value.value != 0


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def exit_by_signal(signum: int) -> NoReturn:
    """End this process by ``signum`` with its default action, from any thread.

    ``signal.signal`` works only in the main thread, and the main thread may be stuck in a long
    C call, so the default disposition is restored with libc's ``signal()`` through ctypes (the
    disposition is process-wide; Python's own handler table no longer matters because the
    process dies), then the signal is sent to this very thread, which takes it on return from
    the system call. The parent sees the real cause (``-N`` from Popen, ``128+N`` in a shell).
    When that does not end the process (PID 1 of a namespace ignores default-action signals, or
    ctypes is unavailable), ``os._exit(128 + signum)`` does.
    """
    # Flushed from a helper thread: if another thread holds stdout's lock while blocked on a full
    # pipe, exiting must not wait on it. Python 3.12 starts no thread while atexit handlers run;
    # there the flush is inline (the alternative, not flushing, loses what was printed last).
    try:
        flusher = threading.Thread(target=_flush_stdio, name="sessionstore-flush", daemon=True)
        flusher.start()
    except RuntimeError:
        _flush_stdio()
    else:
        flusher.join(0.5)
    libc = _libc()
    if libc is not None:
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signum, None)  # None is NULL, which is SIG_DFL
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        with contextlib.suppress(OSError):
            signal.pthread_kill(threading.get_ident(), signum)
    os._exit(128 + signum)
