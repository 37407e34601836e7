"""Fork only while no thread of this library is inside SQLite.

SQLite keeps process-wide mutexes (its memory allocator's, the unix VFS's, the open-file
table's). A thread inside SQLite at the moment another thread forks may hold one; in the child
that mutex stays locked forever, and the child's first ``apsw.Connection()`` waits on it for
good (measured: 4 children of 30 hung that way while threads read and wrote). Those mutexes
cannot be reset from Python, so this gate keeps them free at fork instead: every call into
SQLite by the store runs inside the gate (a shared, counted section), and an at-fork hook closes
the gate and waits for the count to reach zero before the fork proceeds, then reopens it in
the parent. In the child the gate starts fresh.

Each thread has its own ``RLock``; a gated section is ``with FORK_GATE.section():``, and the
at-fork hook takes every thread's lock (so no thread is inside a section when the fork happens)
and lets them go after it. The lock is C code entered by a ``with`` statement: a signal
handler's exception cannot leave it taken (a counter kept in Python could be left counting a
thread that is long gone). It is re-entrant, so a fork from a signal handler that interrupted
a gated section of the forking thread itself does not wait on itself.

A thread's first section registers its lock; the at-fork hook holds the registry from its
snapshot of the locks until the fork is done, so a thread starting its first section meanwhile
waits too (before, such a thread could enter SQLite between the snapshot and the fork).

The wait is bounded (``FORK_WAIT_S``, 30 s, shared by all threads). A section lasts one SQLite
call, and a write's busy waits end at its ``write_deadline_s`` (10 s by default), so the wait
runs out only when a thread holds a section far longer than any write may. Then the fork goes
ahead (an at-fork hook cannot refuse it), and the child is marked: its first call into SQLite
raises :class:`UnsafeForkError` instead of hanging on a mutex that will never be released. The
first version waited at most 1 s: on a loaded machine a section can outlast that, and about
one child in a few thousand hung (caught under gdb: waiting forever in ``sqlite3Malloc`` on
SQLite's allocator mutex, inside ``apsw.Connection()``). Rejected: taking each store's writer
lock and read connections at fork (misses connections being opened and stores being opened or
closed, and waits on every lock holder, not only on SQLite calls).
"""

from __future__ import annotations

import threading
import time
import weakref

from . import _lifecycle as lifecycle
from .errors import UnsafeForkError

__all__ = ["FORK_GATE", "FORK_WAIT_S", "ForkGate"]

FORK_WAIT_S = 30.0


class ForkGate:
    """Per-thread locks around SQLite calls, all taken by the at-fork hook while it forks."""

    def __init__(self) -> None:
        self._reset()
        self.unsafe_since_fork = False
        self.wait_s = FORK_WAIT_S  # the bound on a fork's wait; tests and callers may lower it
        # The thread signal handlers run in: the main thread, and in a child the thread that
        # forked (see after_fork_in_child). Kept here because only a fork changes it, and read
        # on every write (``current_thread() is main_thread()`` is two Python calls).
        self.main_ident = threading.main_thread().ident

    def _reset(self) -> None:
        # ``local.lock``: this thread's lock once it has one, what section() returns. A hot
        # path may read it directly and call section() only when it is missing: a child's
        # fresh ``local`` has no lock, so an unsafe fork is still reported by section().
        self.local = threading.local()
        self._registry_lock = threading.Lock()
        self._locks: weakref.WeakKeyDictionary[threading.Thread, threading.RLock] = (
            weakref.WeakKeyDictionary()
        )
        self._held: list[threading.RLock] = []
        self._all_held = True

    def section(self) -> threading.RLock:
        """This thread's lock: ``with FORK_GATE.section():`` around a call into SQLite.

        Raises:
            UnsafeForkError: this process was forked while a thread of its parent was inside
                SQLite (the wait ran out); SQLite must not be used here.
        """
        if self.unsafe_since_fork:
            raise UnsafeForkError(self.wait_s)
        lock: threading.RLock | None = getattr(self.local, "lock", None)
        if lock is None:
            lock = threading.RLock()
            with self._registry_lock:
                self._locks[threading.current_thread()] = lock
            self.local.lock = lock
        return lock

    def before_fork(self) -> None:
        """Take every thread's lock, waiting at most ``wait_s`` in all; keep the registry."""
        deadline = time.monotonic() + self.wait_s
        self._registry_lock.acquire()  # released after the fork (module doc)
        locks = list(self._locks.values())
        for lock in locks:
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._held.append(lock)
        self._all_held = len(self._held) == len(locks)

    def after_fork_in_parent(self) -> None:
        """Let the locks and the registry go."""
        held, self._held = self._held, []
        for lock in held:
            lock.release()
        self._registry_lock.release()

    def after_fork_in_child(self) -> None:
        """Fresh locks: the parent's threads and what they held do not exist here."""
        unsafe = self.unsafe_since_fork or not self._all_held
        self._reset()
        self.unsafe_since_fork = unsafe
        self.main_ident = threading.get_ident()  # the forking thread is the child's only one


FORK_GATE = ForkGate()
lifecycle.at_fork(
    __name__,
    "no thread inside SQLite at the fork; fresh locks in the child",
    before=FORK_GATE.before_fork,
    after_in_parent=FORK_GATE.after_fork_in_parent,
    after_in_child=FORK_GATE.after_fork_in_child,
)
