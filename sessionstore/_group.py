"""Group commit: the writes threads make while a commit waits on its fsync share the next one.

With ``synchronous=FULL`` every commit waits for the disk (an fsync, milliseconds), and the
writer's lock is held meanwhile, so with many writer threads in one process each write queues
behind every other write's fsync. With ``StoreConfig(group_commit=True)`` the store's writer is
a :class:`GroupWriter`: a write joins a queue; the thread that finds no commit being led leads
one. The leader takes the writer's lock as :meth:`Writer.apply` does, takes every op queued by
then (its own included) into one ``BEGIN IMMEDIATE`` transaction, each op in its own savepoint,
commits, and hands each waiting thread its own result or its own error. Writes that arrive
while that commit runs wait for the next one, led by the oldest of them.

What each caller is promised, as with one transaction per op:

- it returns only once its own op has committed (and, at FULL, is on disk), or raises;
- an op the database refuses (``SessionNotFoundError``, ``InvalidTransitionError``, a
  constraint) fails its caller only: its savepoint is rolled back and the others commit;
- a transaction that fails as a whole (BUSY at its deadline, I/O error, disk full) fails every
  op in it with that error; none is acknowledged and nothing of it is applied;
- ``write_deadline_s`` bounds the call, the time queued behind another thread's commit
  included: an op still queued at its deadline leaves the queue with ``StoreBusyError`` and
  nothing written. An op already taken into a transaction cannot be taken back; its caller
  waits for that transaction's outcome, whose busy waits and retries end at the earliest
  deadline of its ops (the leader's included), so the caller's own deadline bounds it too.

The router above (``_routing``) sees each call exactly as an unbatched ``apply``: one op, its
result or its error, so leases, counters, journaling and the commit hook are unchanged.

Interrupts. A signal handler's exception lands in the main thread, which may be leading. The
leadership is a lock taken with ``with`` (C code, see ``_writer``) in the main thread, so it is
released whatever is raised, and so is the writer's lock. The ops of an interrupted leader's
transaction fail with :class:`LeaderInterruptedError` (a ``StoreBusyError``: the router
journals them, and replay is idempotent by op id, so an op whose commit happened just before
the interrupt is not lost or doubled). Should the interrupt land even in that clean-up, no
waiting thread hangs: every wait is cut into :data:`POLL_S` slices, after each of which a
queued op takes the lead if no one holds it, and an op whose transaction's leader let go of
the lead without an outcome for it fails as above.
Rejected: handing interrupted transactions' ops back to the queue (an op whose commit did
happen would be applied twice: a repeated status change is refused, so its caller would be
told its committed op failed); waiting without slices (one interrupt at the wrong bytecode
would leave every later write of the process queued behind a leader that is gone).
Rejected for the wake-ups (by design, not measured): one ``Condition`` for every waiter (each
commit would wake all of them to find their own outcome); each waiter waiting on the writer's
lock itself (a thread whose op already committed would learn it only once it got the lock,
which another thread may take first for a whole commit).

Under ``synchronous=NORMAL`` a commit does not wait for the disk, so there is little to share
(measured: no gain); the config refuses the combination (``StoreConfig.group_commit``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import apsw

from ._config import StoreConfig, group_commit_problem
from ._connection import RetryPolicy, in_transaction
from ._ops import Op, apply, handler
from ._writer import BATCH, Writer, _one_transaction
from .errors import StoreBusyError

__all__ = ["POLL_S", "GroupWriter", "LeaderInterruptedError", "make_writer"]

# The longest a waiting thread sleeps before it looks again whether the lead is free or its
# transaction's leader is gone. A safety net only: every normal hand-over wakes the thread.
POLL_S = 0.05

# Errors after which the transaction cannot go on (SQLite may have rolled it back already, or
# the connection is unusable): every op in it fails. Any other error an op raises is its own:
# its savepoint is rolled back and the others go on.
_WHOLE_TRANSACTION_ERRORS = (
    apsw.BusyError,
    apsw.IOError,
    apsw.FullError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.InterruptError,
    apsw.ConnectionClosedError,
    apsw.ThreadingViolationError,
    apsw.NoMemError,
    apsw.ReadOnlyError,
    apsw.CantOpenError,
    apsw.LockedError,
)

_QUEUED, _IN_TXN, _DONE = 0, 1, 2


class LeaderInterruptedError(StoreBusyError):
    """The thread committing this op's transaction was interrupted; the outcome is unknown.

    A ``StoreBusyError``, so the store journals the op (its replay is idempotent by op id).
    """

    def __init__(self, path: str, operation: str, waited_s: float) -> None:
        super().__init__(path, operation, waited_s)
        self.args = (
            f"{operation} on {path!r}: the thread committing it was interrupted after "
            f"{waited_s:.2f} s; its outcome is unknown",
        )


class _Entry:
    """One waiting call: its op, its deadline, and what the transaction made of it."""

    __slots__ = ("end", "epoch", "error", "op", "result", "start", "state", "wake", "woken")

    def __init__(self, op: Op, start: float, end: float) -> None:
        self.op = op
        self.start = start
        self.end = end
        self.state = _QUEUED
        self.epoch = 0  # the leadership under which it was taken into a transaction
        self.result: Any = None
        self.error: BaseException | None = None
        # A lock used as a one-slot semaphore: released to wake the waiter (C code, cheaper
        # than an Event, which is a Condition written in Python).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.woken = False

    def finish(self, ok: bool, value: Any) -> None:
        """Record the outcome (the group lock held)."""
        self.state = _DONE
        if ok:
            self.result = value
        else:
            self.error = value


def _signal(entry: _Entry) -> None:
    """Wake ``entry``'s waiter (the group lock held); a wake not yet consumed is kept."""
    if not entry.woken:
        entry.woken = True
        entry.wake.release()


class GroupWriter(Writer):
    """A :class:`Writer` whose :meth:`apply` shares transactions between threads.

    Everything but :meth:`apply` is the writer's own (batches, checkpoints, close, fork).
    ``group_commits`` and ``group_ops`` count the transactions it committed and the ops in
    them (their ratio is the mean group size).
    """

    # Writes come as ops, which it can queue and put in savepoints: Writer.call would take one
    # past the queue, in a transaction of its own.
    takes_calls: ClassVar[bool] = False

    def __init__(
        self, path: str, config: StoreConfig, policy: RetryPolicy, clock: Callable[[], float]
    ) -> None:
        problem = group_commit_problem(config.synchronous, True)
        if problem is not None:  # a config built without validation
            raise ValueError(problem)
        super().__init__(path, config, policy, clock)
        self.group_commits = 0
        self.group_ops = 0
        self._last_batch = 0
        self._init_group()

    def _init_group(self) -> None:
        self._glock = threading.Lock()  # guards the queue and every entry's state
        self._queue: deque[_Entry] = deque()
        self._lead = threading.Lock()  # held by the thread leading a transaction
        self._epoch = 0  # counts leaderships: which one an entry's transaction belongs to

    def forget_after_fork(self) -> apsw.Connection | None:
        """In a forked child: the parent's queue and locks belong to threads not here."""
        conn = super().forget_after_fork()
        self._init_group()
        return conn

    def apply(self, op: Op, *, deadline: float | None = None) -> Any:
        """Apply ``op`` in a transaction shared with the ops other threads write meanwhile.

        Args:
            op: the op.
            deadline: return by then (writer's clock) even if ``write_deadline_s`` is later.

        Returns:
            What the op's apply returned, once its transaction committed.

        Raises:
            SessionNotFoundError, InvalidTransitionError: the op is wrong; it alone was rolled
                back (the others of its transaction committed).
            StoreBusyError: still queued, or locked, at the deadline (nothing of it written);
                or its transaction's leader was interrupted (:class:`LeaderInterruptedError`,
                outcome unknown).
            apsw.Error: its transaction failed as a whole; nothing of it was applied.
            BaseException: an interrupt in this thread; the op left the queue if it was
                still in it (already taken into another thread's transaction, it may commit,
                as an unbatched op interrupted in its commit hook has).
        """
        if self._last_batch <= 1 and not self._queue and not self._lead.locked():
            alone, result = self._apply_alone(op, deadline)
            if alone:
                return result
        start = self._clock()
        own_end = start + self._deadline_s
        entry = _Entry(op, start, own_end if deadline is None else min(own_end, deadline))
        with self._glock:
            self._queue.append(entry)
        try:
            self._follow_or_lead(entry)
        except BaseException:
            self._withdraw(entry)
            raise
        if entry.error is not None:
            raise entry.error
        return entry.result

    def _apply_alone(self, op: Op, deadline: float | None) -> tuple[bool, Any]:
        """No one leads and no one waits: the op's own transaction, as the unbatched writer's.

        The lead is held meanwhile, so writes that arrive queue for the next transaction.
        Through the queue, a lone writer thread spent about 8 us of CPU per op more than the
        unbatched writer at FULL (144 against 136 us, 9 rounds); this way about 1.5 (46.4
        against 44.9 us at NORMAL, where no fsync blurs the figure). Only
        taken while the last transaction had one op: once several threads write, a thread
        that just led would otherwise commit its next op alone before the threads it woke
        could queue theirs (measured: 1.4 ops per transaction at 4 threads instead of 3.5).

        Returns:
            (True, what apply returned), or (False, None) when another thread took the lead
            or queued first (the op was not applied; it goes through the queue).

        Raises:
            What :meth:`Writer.apply` raises.
        """
        try:
            if threading.current_thread() is threading.main_thread():
                with self._lead:  # C code: an interrupt cannot leave the lead taken
                    return self._led_alone(op, deadline)
            if not self._lead.acquire(blocking=False):
                return False, None
            try:
                return self._led_alone(op, deadline)
            finally:
                self._lead.release()
        finally:
            self._wake_next()  # whoever queued meanwhile leads the next transaction

    def _led_alone(self, op: Op, deadline: float | None) -> tuple[bool, Any]:
        """:meth:`_apply_alone`'s transaction, the lead held by this thread."""
        if self._queue:
            return False, None
        self._epoch += 1
        result = Writer.apply(self, op, deadline=deadline)
        self.group_commits += 1
        self.group_ops += 1
        self._last_batch = 1
        return True, result

    # ------------------------------------------------------------------ waiting

    def _follow_or_lead(self, entry: _Entry) -> None:
        """Return once ``entry`` is done: led by this thread or by another."""
        main = threading.current_thread() is threading.main_thread()
        while entry.state != _DONE:
            if not self._lead.locked():
                if main:
                    # C code: an interrupt cannot leave the lead taken (module docstring).
                    with self._lead:
                        self._lead_locked(entry, main=True)
                elif self._lead.acquire(blocking=False):
                    try:
                        self._lead_locked(entry, main=False)
                    finally:
                        self._lead.release()
                else:
                    continue  # taken in between: look at the state again
                self._wake_next()
                continue
            timeout = self._settle_or_timeout(entry)
            if timeout is None:
                return
            if entry.wake.acquire(timeout=timeout):
                with self._glock:
                    entry.woken = False

    def _settle_or_timeout(self, entry: _Entry) -> float | None:
        """Fail ``entry`` if its wait is over; else how long to wait (None: it is done)."""
        now = self._clock()
        with self._glock:
            if entry.state == _DONE:
                return None
            if entry.state == _QUEUED:
                if now < entry.end:
                    return min(entry.end - now, POLL_S)
                self._queue.remove(entry)
                entry.finish(False, StoreBusyError(self.path, entry.op.kind, now - entry.start))
                free = not self._lead.locked() and bool(self._queue)
            else:
                if entry.epoch == self._epoch and self._lead.locked():
                    return POLL_S  # its leader still leads: the outcome will come
                # Its leader let go of the lead without an outcome for it: interrupted.
                error = LeaderInterruptedError(self.path, entry.op.kind, now - entry.start)
                entry.finish(False, error)
                free = False
        if free:
            self._wake_next()
        return None

    def _withdraw(self, entry: _Entry) -> None:
        """An interrupt in ``entry``'s own thread: take its op out of the queue if it is there."""
        with self._glock:
            if entry.state == _QUEUED:
                self._queue.remove(entry)
                entry.state = _DONE
        self._wake_next()

    def _wake_next(self) -> None:
        """Wake the oldest queued op's thread to take the lead, if it is free."""
        if self._lead.locked():
            return
        with self._glock:
            if self._queue:
                _signal(self._queue[0])

    # ------------------------------------------------------------------ leading

    def _lead_locked(self, entry: _Entry, *, main: bool) -> None:
        """Lead one transaction holding the lead: take the writer's lock, the queue, commit."""
        self._epoch += 1
        epoch = self._epoch
        now = self._clock()
        with self._glock:
            if entry.state == _IN_TXN:
                # Taken by a leader that let go of the lead without an outcome for it.
                entry.finish(False, LeaderInterruptedError(self.path, entry.op.kind, 0.0))
            if entry.state == _DONE:
                return
            if now >= entry.end:
                self._queue.remove(entry)
                entry.finish(False, StoreBusyError(self.path, entry.op.kind, now - entry.start))
                return
        if main:
            with self._lock:  # C code, and without a timeout: see Writer._lock_wait
                self._commit_round(epoch)
            return
        if not self._lock.acquire(timeout=max(0.0, entry.end - now)):
            # Another thread of this process (a checkpoint, a close) held the writer past this
            # call's deadline; the ops queued behind it get the next leader.
            waited = self._clock() - entry.start
            with self._glock:
                if entry.state == _QUEUED:
                    self._queue.remove(entry)
                    entry.finish(False, StoreBusyError(self.path, entry.op.kind, waited))
            return
        try:
            self._commit_round(epoch)
        finally:
            self._lock.release()

    def _commit_round(self, epoch: int) -> None:
        """Take the queue into one transaction and hand out the outcomes (both locks held)."""
        if self._last_batch > 1:
            # Other writer threads are about: the ones the last commit woke are waiting for the
            # interpreter lock to queue their next op, while this thread holds it and would
            # commit its op alone. Letting them run first (a yield, not a wait for anything)
            # made 4 threads' transactions 3.5 ops instead of 1.4 (1.8-2.0x the unbatched
            # path instead of 1.2-1.5x). Never paid by a single writer thread.
            time.sleep(0)
        now = self._clock()
        batch: list[_Entry] = []
        with self._glock:
            while self._queue and len(batch) < BATCH:
                queued = self._queue.popleft()
                if now >= queued.end:  # its deadline passed while it waited: nothing written
                    waited = now - queued.start
                    queued.finish(False, StoreBusyError(self.path, queued.op.kind, waited))
                    _signal(queued)
                    continue
                queued.state = _IN_TXN
                queued.epoch = epoch
                batch.append(queued)
        self._last_batch = len(batch)
        if not batch:
            return
        try:
            outcomes = self._commit(batch)
        except BaseException as err:
            if isinstance(err, Exception):  # the transaction failed as a whole
                outcomes = [(False, err)] * len(batch)
            else:  # an interrupt in this (the main) thread: the outcome is unknown
                with self._glock:
                    for taken in batch:
                        if taken.state != _DONE:
                            waited = self._clock() - taken.start
                            error = LeaderInterruptedError(self.path, taken.op.kind, waited)
                            taken.finish(False, error)
                            _signal(taken)
                raise
        with self._glock:
            for taken, (ok, value) in zip(batch, outcomes, strict=True):
                taken.finish(ok, value)
                _signal(taken)

    def _commit(self, batch: Sequence[_Entry]) -> list[tuple[bool, Any]]:
        """One transaction for the batch's ops, retried on BUSY until its earliest deadline.

        Raises:
            Exception: the transaction failed as a whole (nothing of it applied).
        """
        conn = self.connection_locked()
        end = min(taken.end for taken in batch)
        if len(batch) == 1:  # no savepoint: exactly the unbatched transaction
            op = batch[0].op
            try:
                value = self._transact(
                    conn, lambda: _one_transaction(conn, handler(op), op), op.kind, end
                )
            except Exception as err:
                return [(False, err)]
            outcomes: list[tuple[bool, Any]] = [(True, value)]
        else:
            ops = [taken.op for taken in batch]
            outcomes = self._transact(
                conn, lambda: _savepoint_results(conn, ops), "group commit", end
            )
        self.group_commits += 1
        self.group_ops += len(batch)
        # Counted as Writer.apply counts: under the writer's lock, read by the router.
        self.applied += sum(1 for ok, _ in outcomes if ok)
        return outcomes


def _savepoint_results(conn: apsw.Connection, ops: Sequence[Op]) -> list[tuple[bool, Any]]:
    """One transaction, each op in a savepoint: per op (True, result) or (False, its error).

    Raises:
        Exception: one of the errors after which the transaction cannot go on (it is rolled
            back: nothing applied).
    """

    def body() -> list[tuple[bool, Any]]:
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                with conn:  # nested: a savepoint, rolled back to and released in C on error
                    value = apply(op, conn)
            except _WHOLE_TRANSACTION_ERRORS:
                raise
            except Exception as err:
                if not conn.txn_state():
                    raise  # SQLite ended the whole transaction (an ON CONFLICT ROLLBACK)
                out.append((False, err))
            else:
                out.append((True, value))
        return out

    return in_transaction(conn, body)


def make_writer(
    path: str, config: StoreConfig, policy: RetryPolicy, clock: Callable[[], float]
) -> Writer:
    """The store's writer: a :class:`GroupWriter` when ``config.group_commit`` is on.

    Raises:
        ValueError: ``group_commit`` with ``synchronous="NORMAL"`` in a config built without
            validation (``model_construct``).
    """
    if config.group_commit:
        return GroupWriter(path, config, policy, clock)
    return Writer(path, config, policy, clock)
