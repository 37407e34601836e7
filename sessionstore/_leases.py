"""The closing gate: refcounted leases, the pending-op queue, and drain with a deadline.

One lock guards the store's state, its leases and its pending queue together, so the decision
"apply now / queue / journal" for a write is atomic with ``close()`` moving the state on: an op
is never admitted to an OPEN store that has just begun closing, nor queued after the queue was
drained for the last time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from ._models import StoreState

__all__ = ["Gate", "Lease"]

T = TypeVar("T")

# Every write takes a lease and returns it, so its path reads no attribute it need not: a
# member looked up on its enum class costs about 55 ns (three looks per write), a module
# function looked up through its module about 20 ns (measured, Python 3.11).
_OPEN = StoreState.OPEN
_get_ident = threading.get_ident
_monotonic = time.monotonic


class Lease:
    """Permission to use the store's connections for one call; records who holds it.

    Compared and hashed by identity: the gate keeps the leases out in a set.
    """

    __slots__ = ("abandoned", "acquired_at", "borrower", "thread_id")

    def __init__(self, borrower: str) -> None:
        self.borrower = borrower
        self.thread_id = _get_ident()  # the name is looked up only when reported
        self.acquired_at = _monotonic()
        self.abandoned = False

    @property
    def thread(self) -> str:
        """Name of the thread that took the lease (its id if that thread has ended)."""
        for t in threading.enumerate():
            if t.ident == self.thread_id:
                return t.name
        return f"thread-{self.thread_id}"

    def describe(self) -> str:
        """``borrower (thread, held N.NN s)`` for reports."""
        held = time.monotonic() - self.acquired_at
        return f"{self.borrower} (thread {self.thread}, held {held:.2f} s)"

    def __repr__(self) -> str:
        return f"<Lease {self.describe()}{' abandoned' if self.abandoned else ''}>"


def _taken_at(lease: Lease) -> float:
    return lease.acquired_at


Admission = Lease | Literal["queued", "overflow", "closed"]


class Gate(Generic[T]):
    """State machine OPEN -> CLOSING -> CLOSED with leases and a bounded pending queue of T."""

    def __init__(self, max_pending: int) -> None:
        # Entered as ``with self._lock:``, never ``with self._cond:``: Condition.__enter__ is
        # Python code, so an exception a signal handler raises in the main thread could land
        # after the lock is taken and before the ``with`` protects it, leaving it taken for
        # good. The lock's own ``__enter__`` is C code (see ``_writer``).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = StoreState.OPEN
        self._leases: set[Lease] = set()
        self._pending: deque[T] = deque()
        self._max_pending = max_pending

    @property
    def state(self) -> StoreState:
        """The current state."""
        return self._state

    def counts(self) -> tuple[StoreState, int, int]:
        """``(state, leases out, ops pending)`` read together."""
        with self._lock:
            return self._state, len(self._leases), len(self._pending)

    def acquire(self, borrower: str) -> Lease | None:
        """Take a lease, or None when the store is not OPEN (no new leases while closing)."""
        with self._lock:
            if self._state is not _OPEN:
                return None
            lease = Lease(borrower)
            self._leases.add(lease)
            return lease

    def admit_write(self, op: T, borrower: str) -> Admission:
        """Decide, atomically with the state, where a write goes.

        Returns:
            A lease (OPEN: apply now, then release it); ``"queued"`` (CLOSING: the op joined the
            pending queue); ``"overflow"`` (CLOSING but the queue is full: journal it);
            ``"closed"`` (CLOSED: journal it).
        """
        lease = self.admit_now(borrower)
        if lease is not None:
            return lease
        with self._lock:  # not OPEN, and never again (the state only moves forward)
            if self._state is StoreState.CLOSING:
                if len(self._pending) >= self._max_pending:
                    return "overflow"
                self._pending.append(op)
                return "queued"
            return "closed"

    def admit_now(self, borrower: str) -> Lease | None:
        """A lease to write now if the store is OPEN (release it after), else None.

        :meth:`admit_write` without the queue: for a caller that builds its op only when the
        write cannot be applied now, and then calls :meth:`admit_write` with it.
        """
        if self._state is _OPEN:
            # Without the lock: register the lease, then look at the state again. Each step
            # is one atomic operation under the GIL, so if the second look still sees OPEN,
            # the lease was registered before close() moved the state on, and its
            # wait_drained() (which looks at the leases after that move) waits for it.
            # Rejected: taking the lock on every write (a third of the gate's cost, and a
            # point where every writing thread of the process meets).
            lease = Lease(borrower)
            self._leases.add(lease)
            if self._state is _OPEN:
                return lease
            self.release(lease)  # close began in between
        return None

    def release(self, lease: Lease) -> None:
        """Return a lease; wakes ``wait_drained``. Releasing an abandoned lease is harmless."""
        # No lock while the store is OPEN: nobody waits for the leases then. If close() moved
        # the state on after the pop, its wait_drained() looks at the leases after that move
        # and finds this one gone; if before, the state read here says so and the waiter is
        # woken under the lock (it holds the lock from its look at the leases to its wait).
        try:
            self._leases.remove(lease)  # one step under the GIL: taken back here or by close
        except KeyError:
            return  # released already, or abandoned by close()
        if self._state is not _OPEN:
            with self._lock:
                if not self._leases:
                    self._cond.notify_all()

    def begin_close(self) -> bool:
        """Move OPEN -> CLOSING. Returns False when it was not OPEN."""
        with self._lock:
            if self._state is not _OPEN:
                return False
            self._state = StoreState.CLOSING
            return True

    def wait_drained(
        self, timeout: float, *, clock: Callable[[], float] = time.monotonic
    ) -> list[Lease]:
        """Wait until no lease is out, at most ``timeout`` seconds.

        Returns:
            The leases still out at the deadline, now marked abandoned (empty when drained).
        """
        deadline = clock() + timeout
        with self._lock:
            while self._leases:
                left = deadline - clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            abandoned = sorted(self._leases, key=_taken_at)
            for lease in abandoned:
                lease.abandoned = True
                # discard, not remove: its holder may be releasing it right now (release takes
                # no lock for the look itself).
                self._leases.discard(lease)
            return abandoned

    def take_pending_or_close(self, max_items: int) -> list[T]:
        """Take up to ``max_items`` queued ops; when none is left, move CLOSING -> CLOSED.

        Returns:
            The ops to apply now; an empty list means the store is now CLOSED and every op that
            arrives from here on will be told ``"closed"``.
        """
        with self._lock:
            if not self._pending:
                self._state = StoreState.CLOSED
                return []
            n = min(max_items, len(self._pending))
            return [self._pending.popleft() for _ in range(n)]

    def close_and_take_all(self) -> list[T]:
        """Move to CLOSED and take whatever is still queued (the drain ran out of time)."""
        with self._lock:
            self._state = StoreState.CLOSED
            ops = list(self._pending)
            self._pending.clear()
            return ops

    def drain_pending(self) -> list[T]:
        """Take every queued op at once (for the hard-exit path that journals them)."""
        with self._lock:
            ops = list(self._pending)
            self._pending.clear()
            return ops

    def force_closed(self) -> None:
        """Mark CLOSED (the open failed, or the process is about to exit hard)."""
        with self._lock:
            self._state = StoreState.CLOSED
            self._cond.notify_all()
