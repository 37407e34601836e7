"""What the operating system says about a process: one reader, one error policy.

Every question the package asks about a process (is it there, who is its parent, which group,
is it a zombie, what is its command line, does its environment carry our tree marker) is answered
here, from ``/proc`` on Linux and from psutil elsewhere. Each answer is one of three, never two:

* a fact;
* ``None``: the kernel says there is no such process (``ENOENT``/``ESRCH``);
* :class:`ProcessUnreadableError` raised: it could not be read (permissions, ``hidepid``,
  another PID namespace, a garbled line). "Cannot read" means "unknown, leave it alone": it is
  never taken for "gone" (which would let a caller record a live process as ended, or skip
  verifying it), and never for "ours" (which would let a caller signal a stranger).
"""

from __future__ import annotations

import errno
import os
import selectors
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "LINUX",
    "ProcessTable",
    "ProcessUnreadableError",
    "StatInfo",
    "environ_value",
    "list_pids",
    "read_argv",
    "read_cgroup",
    "read_children",
    "read_children_lists",
    "read_stat",
    "scan",
    "settled_argv",
    "wait_pidfds",
]

LINUX = sys.platform.startswith("linux")

_POLL_S = 0.02  # how often ``wait_pidfds`` calls its ``poll`` (processes without a pidfd)
_MAX_SELECT_S = 3600.0  # clamp: huge select timeouts misbehave (python/cpython#154836)

# How long a command line may stay empty while the kernel is inside execve (the new image is
# mapped, its argument area not yet filled in). Measured: microseconds, milliseconds under load.
_EXEC_SETTLE_S = 0.5


class ProcessUnreadableError(PermissionError):
    """The process exists (or may exist) but could not be read: treat it as unknown."""

    def __init__(self, pid: int, why: str) -> None:
        super().__init__(errno.EACCES, f"cannot read process {pid}: {why}")
        self.pid = pid
        self.why = why

    def __reduce__(self) -> tuple[type[ProcessUnreadableError], tuple[int, str]]:
        return (type(self), (self.pid, self.why))


@dataclass(frozen=True)
class StatInfo:
    """One read of ``/proc/<pid>/stat``: the fields identity and tree discovery need."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # one-letter kernel state: R, S, D, Z, T, X, ...
    start_ticks: int

    @property
    def finished(self) -> bool:
        """True for a zombie or dead process: it can never run again."""
        return self.state in ("Z", "X")


@dataclass(frozen=True)
class ProcessTable:
    """One pass over every visible process."""

    procs: dict[int, StatInfo]
    unreadable: frozenset[int] = field(default_factory=frozenset)  # listed, could not be read


def _read(pid: int, path: str) -> bytes | None:
    """Read a whole ``/proc`` file; None when the process does not exist.

    Raw ``os.open``/``os.read``: a shutdown scans every process several times, and the buffered
    file object costs more than the read itself.

    Raises:
        ProcessUnreadableError: the file exists but could not be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as err:
        raise ProcessUnreadableError(pid, f"{path}: {err.strerror}") from err
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except ProcessLookupError:
        return None  # ESRCH: it exited while we read
    except OSError as err:
        raise ProcessUnreadableError(pid, f"{path}: {err.strerror}") from err
    finally:
        os.close(fd)


def read_stat(pid: int) -> StatInfo | None:
    """Read one process's parent, group, session, state and start ticks.

    Returns:
        The fields, or None when no process has that pid.

    Raises:
        ProcessUnreadableError: it could not be read (or its stat line did not parse).
    """
    if not LINUX:
        return _psutil_stat(pid)
    raw = _read(pid, f"/proc/{pid}/stat")
    if raw is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    try:
        rest = raw[raw.rindex(b")") + 2 :].split()
        return StatInfo(
            pid=pid,
            ppid=int(rest[1]),
            pgid=int(rest[2]),
            sid=int(rest[3]),
            state=rest[0].decode("ascii", "replace"),
            start_ticks=int(rest[19]),
        )
    except (ValueError, IndexError) as err:
        raise ProcessUnreadableError(pid, f"unparsable stat line {raw[:80]!r}") from err


def _psutil_stat(pid: int) -> StatInfo | None:
    import psutil  # off Linux only: imported on first use so the library imports light

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            status = proc.status()
            ppid = proc.ppid()
            # Microseconds of create time: stable for the life of the process on these platforms.
            start = int(proc.create_time() * 1_000_000)
        pgid = os.getpgid(pid)
        sid = os.getsid(pid)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return None
    except (psutil.Error, OSError) as err:
        raise ProcessUnreadableError(pid, repr(err)) from err
    state = "Z" if status == psutil.STATUS_ZOMBIE else "S"
    return StatInfo(pid=pid, ppid=ppid, pgid=pgid, sid=sid, state=state, start_ticks=start)


def read_argv(pid: int) -> list[str] | None:
    """Read a process's command line once; None when it is not known right now.

    Not known: no such process, unreadable, a zombie or kernel thread (no argument area), or a
    process inside ``execve`` (its new image has no arguments yet: ``Popen`` returns as soon as
    the close-on-exec pipe closes, which is *before* the kernel fills them in).
    """
    if not LINUX:
        import psutil

        try:
            return list(psutil.Process(pid).cmdline())
        except psutil.Error:
            return None
    try:
        raw = _read(pid, f"/proc/{pid}/cmdline")
    except ProcessUnreadableError:
        return None
    if not raw:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def settled_argv(pid: int, *, timeout: float = _EXEC_SETTLE_S) -> list[str] | None:
    """Read a command line, waiting out an ``execve`` in progress; None when still unknown.

    There is no event for "exec finished filling in the arguments" (a pidfd reports only
    exit), so this re-reads with a short, growing pause while the process is alive and its
    argument area is empty; a zombie, a kernel thread or an unreadable process ends the wait
    at once. The alternative, reading once, recorded ``argv=[]`` for about one child in six.
    """
    deadline = time.monotonic() + timeout
    pause = 0.0001
    while True:
        argv = read_argv(pid)
        if argv is not None:
            return argv
        try:
            info = read_stat(pid)
        except ProcessUnreadableError:
            return None
        if info is None or info.finished or info.ppid == 2 or pid == 2:
            return None
        now = time.monotonic()
        if now >= deadline:
            return None
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, 0.01)


def read_children(pid: int) -> list[int] | None:
    """The pids whose parent is ``pid`` now (any of its threads), from the kernel's own list.

    ``/proc/<pid>/task/<tid>/children`` reads the parent's list of children directly: about
    20 µs, against a millisecond or more for a pass over every process, which is what lets a
    chase keep up with a process that forks and exits in a loop. An orphan is re-parented to
    a *thread* of its subreaper, hence every thread is read. The kernel documents the list as
    possibly incomplete while children are being added or removed *during the read*; callers
    that need certainty read again once the parent can no longer change it (stopped, or a
    list that only grows, as ours does while nothing reaps).

    Returns:
        The children's pids (zombies included), or None when the kernel does not offer the
        list (not Linux, no ``CONFIG_PROC_CHILDREN``) or no process has that pid.

    Raises:
        ProcessUnreadableError: the list exists but could not be read.
    """
    lists = read_children_lists(pid)
    if lists is None:
        return None
    return [int(part) for raw in lists.values() for part in raw.split()]


def read_children_lists(pid: int) -> dict[str, bytes] | None:
    """Each thread's list of children, as the kernel wrote it (see :func:`read_children`).

    The kernel adds a child (forked, or an orphan re-parented) at the end of its parent
    thread's list and takes one off only when it is reaped, so while nothing reaps, a list read
    earlier is a prefix of the same list read now: a caller can look at the new end alone.

    Returns:
        ``{tid: raw list}`` (pids separated by spaces), or None as :func:`read_children`.

    Raises:
        ProcessUnreadableError: a list exists but could not be read.
    """
    if not LINUX:
        return None
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as err:
        raise ProcessUnreadableError(pid, f"{base}: {err.strerror}") from err
    found: dict[str, bytes] = {}
    for tid in tids:
        try:
            raw = _read(pid, f"{base}/{tid}/children")
        except ProcessUnreadableError:
            if not os.path.exists(f"{base}/{tid}"):
                continue  # the thread ended while we read
            raise
        if raw is None:
            task = f"{base}/{tid}"
            if os.path.isdir(task) and not os.path.exists(f"{task}/children"):
                return None  # the thread is there, its list is not: no CONFIG_PROC_CHILDREN
            continue  # the thread ended while we read
        found[tid] = raw
    return found


def environ_value(pid: int, name: bytes) -> bytes | None:
    """The value of environment variable ``name`` in process ``pid`` (its initial environment).

    Returns:
        The value, or None when the variable is absent or there is no such process (a zombie
        has no environment left: absent).

    Raises:
        ProcessUnreadableError: the environment could not be read (another user's process).
    """
    if not LINUX:
        import psutil

        try:
            value = psutil.Process(pid).environ().get(name.decode())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except (psutil.Error, OSError) as err:
            raise ProcessUnreadableError(pid, repr(err)) from err
        return None if value is None else value.encode()
    raw = _read(pid, f"/proc/{pid}/environ")
    if raw is None:
        return None
    prefix = name + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :]
    return None


def list_pids() -> list[int]:
    """Every visible pid now (one listing of ``/proc``; psutil's elsewhere)."""
    if not LINUX:
        import psutil  # off Linux only: imported on first use so the library imports light

        return list(psutil.pids())
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def read_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of a process (``/`` is the root), from ``/proc/<pid>/cgroup``.

    Returns:
        The path, or None when there is no such process or it is in no v2 hierarchy.

    Raises:
        ProcessUnreadableError: it could not be read.
    """
    if not LINUX:
        return None
    raw = _read(pid, f"/proc/{pid}/cgroup")
    if raw is None:
        return None
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def scan() -> ProcessTable:
    """Read every visible process once (kernel threads left out).

    A process that vanished between the listing and the read is simply not in the table; one
    that could not be read is listed in ``unreadable``, so callers can say what they could not
    check instead of assuming it away.
    """
    procs: dict[int, StatInfo] = {}
    unreadable: set[int] = set()
    for pid in list_pids():
        try:
            info = read_stat(pid)
        except ProcessUnreadableError:
            unreadable.add(pid)
            continue
        # Kernel threads (kthreadd, pid 2, and its children) are never part of a user's tree.
        if info is not None and info.pid != 2 and info.ppid != 2:
            procs[pid] = info
    return ProcessTable(procs=procs, unreadable=frozenset(unreadable))


def wait_pidfds(
    pidfds: Iterable[int],
    deadline: float,
    *,
    wake_fd: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    poll: Callable[[], bool] | None = None,
) -> set[int]:
    """Wait until every pidfd is readable (its process exited), or the deadline passes.

    The one wait on process exits of the package: shutdown, the CLI's ``stop`` and the stress
    harness all call it. One selector over every pidfd (a pidfd turns readable when its process
    exits, zombie or not), so it sleeps until something happens; it polls only for what has no
    pidfd (old kernels, ``EMFILE``, not Linux), through ``poll``.

    Args:
        pidfds: the processes to wait for.
        deadline: a ``time.monotonic()`` value.
        wake_fd: also wake when this fd turns readable (the fd is not read); then
            ``should_stop()`` decides whether to give up early.
        should_stop: checked before each wait and on every wake; True ends the wait.
        poll: for processes without a pidfd: called every 20 ms, True once they have all
            exited (the wait is over only when it says so too).

    Returns:
        The pidfds still not readable (empty when every process exited, and ``poll``, if
        given, said True).
    """
    pending = set(pidfds)
    polled_done = poll is None or poll()
    if not pending and polled_done:
        return pending
    with selectors.DefaultSelector() as sel:
        for fd in pending:
            sel.register(fd, selectors.EVENT_READ)
        if wake_fd is not None:
            sel.register(wake_fd, selectors.EVENT_READ)
        while pending or not polled_done:
            if should_stop():
                break
            timeout = deadline - time.monotonic()
            if not polled_done:
                timeout = min(timeout, _POLL_S)
            # One look even when the time is up: a deadline already past asks "which are
            # still running now", and gets the answer rather than the whole set.
            for key, _ in sel.select(min(max(timeout, 0.0), _MAX_SELECT_S)):
                sel.unregister(key.fd)
                if key.fd == wake_fd:
                    if should_stop():
                        return pending
                    continue  # woken for something else: don't spin on it
                pending.discard(key.fd)
            if not polled_done:
                polled_done = poll is not None and poll()
            if timeout <= 0:
                break
    return pending
