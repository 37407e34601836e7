"""Fork only while no thread of this library is inside SQLite.

SQLite keeps process-wide mutexes (its memory allocator's, the unix VFS's, the open-file
table's). A thread inside SQLite at the moment another thread forks may hold one; in the child
that mutex stays locked forever, and the child's first ``apsw.Connection()`` waits on it for
good (measured: 4 children of 30 hung that way while threads read and wrote). Those mutexes
cannot be reset from Python, so this gate keeps them free at fork instead: every call into
SQLite by the store runs inside the gate (a shared, counted section), and an at-fork hook closes
the gate and waits for the count to reach zero before the fork proceeds, then reopens it in
the parent. In the child the gate starts fresh.

The wait is bounded (``FORK_WAIT_S``): a fork made by a thread that is itself inside a gated
section (a fork from a signal handler that interrupted a read), or while a write waits on
another process's lock, proceeds after that time. Rejected: taking each store's writer lock and
read connections at fork (misses connections being opened and stores being opened or closed,
and waits on every lock holder, not only on SQLite calls).
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

__all__ = ["FORK_GATE", "FORK_WAIT_S", "ForkGate"]

FORK_WAIT_S = 1.0


class ForkGate:
    """A counted section around SQLite calls, closed by the at-fork hook while the fork runs."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False

    def __enter__(self) -> None:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._inside += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._inside -= 1
            if self._forking and not self._inside:
                self._cond.notify_all()

    @property
    def inside(self) -> int:
        """Threads inside a gated section now."""
        return self._inside

    def before_fork(self, timeout: float = FORK_WAIT_S) -> None:
        """Close the gate and wait (at most ``timeout``) until no thread is inside."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._forking = True
            while self._inside:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)

    def after_fork_in_parent(self) -> None:
        """Reopen the gate."""
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        """A fresh gate: the parent's threads and their count do not exist here."""
        self._reset()


FORK_GATE = ForkGate()
os.register_at_fork(
    before=FORK_GATE.before_fork,
    after_in_parent=FORK_GATE.after_fork_in_parent,
    after_in_child=FORK_GATE.after_fork_in_child,
)
