"""Which children of this process it adopted (as the subreaper), and reaping their zombies.

A child subreaper inherits every orphan of its trees, and nobody else will ever ``wait`` for
them: left alone, each one that exits stays a zombie under a long-running orchestrator until it
exits. But this process also has children it *forked* itself — the application's
``subprocess.Popen``, ``multiprocessing``, ``os.fork`` — whose exit status belongs to the code
that waits for them: reaping one of those makes its ``Popen.returncode`` a silent 0 (CPython's
``_try_wait``, psutil#2710). A child is reaped here only on evidence that this process did not
fork it:

* **its session** (certain, and readable even from a zombie): ``setsid`` is the only way a
  session changes, and it makes the caller's pid its session id; a child forked here starts in
  our session, so its session is ours or its own pid. One in any other session came from
  someone else's fork;
* **a parent other than us**, seen while it lived: a child forked here has us as its parent
  from its first instant until it is reaped;
* **this session's tree marker**, read while it lived: only ``spawn`` puts it into an
  environment, and the children ``spawn`` itself forked are the roots, never reaped here;
* **the session cgroup** (the cgroup tier): only ``spawn`` starts processes inside it.

A child with none of these (say, a ``setsid -f`` daemon that was adopted, cleared its
environment and exited before any sweep saw it) is left as it is: it cannot be told from the
application's own ``Popen(start_new_session=True)`` child, and a zombie left is a smaller wrong
than a stolen exit status. Rejected: ``waitpid(-1)`` (steals every status), and reaping every
zombie child not known to the layer (the same, one at a time).

Identity is ``(pid, start ticks)``, the package's identity throughout; each reap opens a pidfd
first and re-reads the process after, so a pid recycled since the sweep read it is never waited.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable

from .._proc import ProcessUnreadableError, StatInfo, read_children, read_stat
from ._os import open_pidfd, waitid_pidfd

__all__ = ["Adoptions", "forked_elsewhere"]

Key = tuple[int, int]  # (pid, start ticks)


def forked_elsewhere(info: StatInfo, my_sid: int) -> bool:
    """True when the session of ``info`` proves this process did not fork it (see above)."""
    return info.sid not in (my_sid, info.pid)


class Adoptions:
    """Evidence of adoption, kept across sweeps, and the sweep that reaps adopted zombies.

    Thread-safe: the listener's tick and a shutdown may both use it.
    """

    def __init__(self) -> None:
        self._me = os.getpid()
        self._sid = os.getsid(0)
        self._lock = threading.Lock()
        self._adopted: set[Key] = set()  # proven adopted (or to be), until reaped or gone
        self._lineage: set[Key] = set()  # seen below a root, with a parent other than us
        self._judged: set[Key] = set()  # live children of ours found without evidence

    def note(self, pid: int, start_ticks: int) -> None:
        """Record evidence that process ``(pid, start_ticks)`` was not forked by us."""
        with self._lock:
            self._adopted.add((pid, start_ticks))

    def is_adopted(self, info: StatInfo) -> bool:
        """True when ``info`` (a child of ours) is known not to have been forked by us."""
        key = (info.pid, info.start_ticks)
        if forked_elsewhere(info, self._sid):
            return True
        with self._lock:
            return key in self._adopted or key in self._lineage

    def reap(self, info: StatInfo) -> int | None:
        """Reap our adopted zombie child ``info``; its exit status, or None when not reaped.

        Nothing is waited unless :meth:`is_adopted` holds and a pidfd opened *before* the
        re-read still names that very zombie child of ours.
        """
        if not info.finished or info.ppid != self._me or not self.is_adopted(info):
            return None
        try:
            fd = open_pidfd(info.pid)
        except ProcessLookupError:
            return None
        if fd is None:
            return self._reap_by_pid(info)
        try:
            now = read_stat(info.pid)
            if now is None or now.start_ticks != info.start_ticks or now.ppid != self._me:
                return None
            code = waitid_pidfd(fd, reap=True)
        except ProcessUnreadableError:
            return None
        finally:
            os.close(fd)
        if code is not None:
            with self._lock:
                self._adopted.discard((info.pid, info.start_ticks))
        return code

    def _reap_by_pid(self, info: StatInfo) -> int | None:
        """Without pidfds: our unreaped zombie child's pid cannot be recycled before this wait."""
        try:
            now = read_stat(info.pid)
        except ProcessUnreadableError:
            return None
        if now is None or now.start_ticks != info.start_ticks or now.ppid != self._me:
            return None
        with contextlib.suppress(ChildProcessError, OSError):
            pid, status = os.waitpid(info.pid, os.WNOHANG)
            if pid == info.pid:
                with self._lock:
                    self._adopted.discard((info.pid, info.start_ticks))
                return os.waitstatus_to_exitcode(status)
        return None

    def sweep(
        self,
        roots: Iterable[Key],
        member: Callable[[StatInfo], bool],
    ) -> int:
        """Learn from our children and the roots' trees; reap the adopted zombies. Cheap.

        Reads only the kernel's child lists (ours, and those below each live root), never a
        pass over every process: about 20 µs per process in the trees.

        Args:
            roots: the layer's own children (forked by ``spawn`` or tracked): never reaped here,
                their statuses belong to their ``Popen`` (or to whoever tracked them).
            member: True for a live process carrying this session's tree marker.

        Returns:
            How many zombies were reaped.
        """
        root_keys = set(roots)
        lineage: set[Key] = set()
        stack = [pid for pid, _ in root_keys]
        walked: set[int] = set()
        while stack:
            parent = stack.pop()
            if parent in walked:
                continue
            walked.add(parent)
            for info in _children(parent):
                if info.ppid != self._me:
                    lineage.add((info.pid, info.start_ticks))
                if not info.finished:
                    stack.append(info.pid)
        reaped = 0
        live: set[Key] = set()
        unproven: set[Key] = set()
        with self._lock:
            self._lineage |= lineage
        for info in _children(self._me):
            key = (info.pid, info.start_ticks)
            if key in root_keys:
                continue
            if info.finished:
                if self.reap(info) is not None:
                    reaped += 1
                continue
            if self.is_adopted(info) or (key not in self._judged and member(info)):
                live.add(key)
            else:
                unproven.add(key)  # its environment is read once, not every sweep
        with self._lock:
            # Evidence is kept only for processes alive now below us or in the roots' trees:
            # a zombie met by the next sweep was alive, and judged, in this one.
            self._adopted = live
            self._lineage = lineage
            self._judged = unproven
        return reaped


def _children(pid: int) -> list[StatInfo]:
    """The children of ``pid`` that could be read (none when the list is not offered)."""
    try:
        pids = read_children(pid)
    except ProcessUnreadableError:
        return []
    found = []
    for child in pids or ():
        try:
            info = read_stat(child)
        except ProcessUnreadableError:
            continue
        if info is not None and info.ppid == pid:
            found.append(info)
    return found
