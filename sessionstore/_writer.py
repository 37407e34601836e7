"""The process's one write connection: BEGIN IMMEDIATE transactions, the retry policy, checkpoints.

Writes in a process are serialised on one connection behind one lock: SQLite admits one writer
per database anyway, and an apsw connection runs one statement at a time. Every transaction is
``BEGIN IMMEDIATE`` (the snapshot is taken with the write lock held, so ``BUSY_SNAPSHOT`` cannot
happen inside it) and the whole transaction is redone on BUSY by the one retry policy.

Every call is bounded by a deadline on the writer's clock: ``write_deadline_s`` from the call's
start (its first attempt included, and its wait for the in-process lock outside the main
thread, see ``_lock_wait``), or sooner when the caller passes one. The busy handler waits
only for what is left of it, so a peer that holds the lock (or is stopped while holding it)
costs a write at most its deadline, never a whole ``busy_timeout_ms`` per attempt.

A signal handler that raises (``KeyboardInterrupt``, a ``SystemExit`` from a SIGTERM handler)
does so in the main thread, between any two of its bytecodes. No ``try``/``finally`` written in
Python can protect a transaction from that: the exception can land between ``BEGIN`` and the
``try``, or inside the ``finally`` before its ``ROLLBACK``. What does hold is the ``with``
statement around a context manager written in C: once its ``__enter__`` has returned, its
``__exit__`` runs whatever is raised, and nothing in between is Python code. So the writer lock
is taken with ``with lock:`` in the main thread, and every transaction is apsw's own ``with
conn:`` (``transaction_mode = "IMMEDIATE"``: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any
exception, all in C), each op of a batch a nested ``with conn:`` savepoint. As a second line, a
transaction found still open after a call is rolled back, and if even that fails the
connection is closed, which rolls it back.
Rejected: running the main thread's writes on a helper thread that no signal handler can reach
(safe, but the two thread wake-ups took the median write from 0.033 to 0.08 ms and a third of
the throughput on the benchmark machine);
masking signals with ``pthread_sigmask`` (the kernel then hands a process-directed signal to
another thread, and CPython still runs the handler in the main thread).

Checkpoints run here too, between two write transactions on this connection (see
``_checkpoint``): from the commit hook when the WAL has grown past its limit, and from the
timer thread every interval.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import apsw

from ._checkpoint import AUTOCHECKPOINT_PAGES, Checkpointer, CheckpointSchedule, run_checkpoint
from ._config import StoreConfig
from ._connection import (
    RetryPolicy,
    fair_busy_handler,
    in_transaction,
    open_connection,
    set_busy,
)
from ._files import wal_path
from ._forkgate import FORK_GATE
from ._models import CheckpointResult
from ._ops import BatchDeadlineError, Op, apply, handler
from .errors import InvalidTransitionError, SessionNotFoundError, StoreBusyError

__all__ = [
    "BATCH",
    "OP_ERRORS",
    "BatchDeadlineError",
    "Writer",
]

log = logging.getLogger("sessionstore")
_get_ident = threading.get_ident  # read on every write: a module global, not an attribute

T = TypeVar("T")
A = TypeVar("A")

BATCH = 1000  # ops per transaction when applying a queue or a journal
# Under a deadline the first transaction of a batch holds this many ops, and each next one as
# many as the last one's pace fits in half the time left: a transaction cannot stop halfway,
# so its size is what it may overrun the deadline by. (1000 ops at once overran a close's
# deadline by 0.3 s with a thread writing flat out beside it, 0.25 ms an op.)
FIRST_TIMED_BATCH = 64
_YIELD_TO_CHECKPOINT_S = 0.002
# Errors an op itself causes: it is rejected, never retried or journaled.
OP_ERRORS = (SessionNotFoundError, InvalidTransitionError)


class Writer:
    """One write connection, opened lazily (again after a fork), with its checkpointing.

    The writer owns its lock: every method that touches the connection takes it itself,
    except those whose name ends in ``_locked``, which run only inside the writer (the commit
    hook, a call already holding it). Callers never take it: :meth:`with_connection` runs a
    function under it, and a close past its deadline uses :meth:`abandon_waits` and
    :meth:`resume_waits`.
    """

    takes_calls: ClassVar[bool] = True
    """Whether :meth:`call` may take a write that is not an op (a ``GroupWriter`` cannot)."""

    def __init__(
        self, path: str, config: StoreConfig, policy: RetryPolicy, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self.config = config
        self._lock = threading.Lock()
        self._abort_waits = False  # set by a close that abandoned leases: busy waits give up
        self.checkpoints = 0
        self.passive_checkpoints = 0
        self.applied = 0  # ops applied by apply(), counted under the writer's lock
        self.last_checkpoint: CheckpointResult | None = None
        self._policy = policy
        self._clock = clock
        self._wal_path = wal_path(path)
        self._conn: apsw.Connection | None = None
        self._pid = os.getpid()
        self._page_size = 4096
        # WAL pages up to which a commit needs no checkpoint decision (wal bytes <= the limit).
        self._limit_pages = config.checkpoint_wal_bytes // self._page_size
        self._passive_at_pages = AUTOCHECKPOINT_PAGES
        self._last_pages = 0
        self._busy_timeout_ms: float = config.busy_timeout_ms
        # Read on every write: kept as plain attributes rather than looked up in the config.
        self._default_busy_ms: float = config.busy_timeout_ms
        self._deadline_s = config.write_deadline_s
        self._sqlite_handler = config.busy_handler == "sqlite"
        self._deadline: float | None = None  # of the call running now, on self._clock
        self._checkpointer: Checkpointer | None = None
        self._checkpoint_run: Callable[[], CheckpointResult | None] | None = None

    # ------------------------------------------------------------------ the connection

    @property
    def is_open(self) -> bool:
        """True while this process holds an open write connection."""
        return self._conn is not None and self._pid == os.getpid()

    @property
    def checkpointer(self) -> Checkpointer | None:
        """The timer thread, once started."""
        return self._checkpointer

    def connection_locked(self) -> apsw.Connection:
        """The connection, opened now if needed (first use, or first use after a fork).

        Raises:
            StoreCorruptError, StoreOpenError, StoreBusyError: opening failed.
        """
        if self._conn is None:
            conn = open_connection(self.path, self.config, self._policy)
            conn.transaction_mode = "IMMEDIATE"  # what ``with conn:`` begins (see module doc)
            self._install_busy(conn)
            self._page_size = int(conn.pragma("page_size"))
            self._limit_pages = self.config.checkpoint_wal_bytes // self._page_size
            conn.set_wal_hook(self._on_commit)
            self._conn = conn
            self._pid = os.getpid()
        if self._checkpointer is None and self._checkpoint_run is not None:
            self._start_checkpointer(self._checkpoint_run)
        return self._conn

    def _install_busy(self, conn: apsw.Connection) -> None:
        if self.config.busy_handler == "fair" and self.config.busy_timeout_ms > 0:
            ref = weakref.ref(self)  # the handler must not keep the writer alive

            def timeout_ms() -> float:
                writer = ref()
                return writer._wait_ms() if writer is not None else 0.0

            def should_abort() -> bool:
                writer = ref()
                return writer is None or writer._abort_waits

            conn.set_busy_handler(fair_busy_handler(timeout_ms, should_abort))
        else:
            set_busy(conn, self.config)

    def _aborted(self) -> bool:
        return self._abort_waits

    def _wait_ms(self) -> float:
        """How long the next busy wait may last: the busy timeout, cut to the call's deadline."""
        if self._deadline is None:
            return self._busy_timeout_ms
        left_ms = (self._deadline - self._clock()) * 1000.0
        return max(0.0, min(self._busy_timeout_ms, left_ms))

    def _end(self, deadline: float | None) -> float:
        """The deadline of a call starting now: ``write_deadline_s`` away, or ``deadline``."""
        own = self._clock() + self.config.write_deadline_s
        return own if deadline is None else min(own, deadline)

    def _left(self, end: float) -> float:
        return max(0.0, end - self._clock())

    def with_connection(self, fn: Callable[[apsw.Connection], T]) -> T:
        """``fn(connection)`` holding the lock, inside the fork gate (opening it if needed).

        For work that is neither an op nor a checkpoint: the integrity probe and the
        migrations at open. ``with`` statements only (C code, see the module docstring).

        Raises:
            StoreCorruptError, StoreOpenError, StoreBusyError: the connection could not open.
            BaseException: what ``fn`` raised.
        """
        with self._lock, FORK_GATE.section():
            return fn(self.connection_locked())

    def abandon_waits(self) -> None:
        """A close past its deadline: busy waits give up and a running statement stops.

        The call holding the lock then fails (its op is journaled by the router) and lets go;
        :meth:`resume_waits` turns waiting back on once it has.
        """
        self._abort_waits = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(apsw.Error):
                conn.interrupt()

    def resume_waits(self, timeout: float) -> bool:
        """Let busy waits wait again, once the abandoned call has let go of the lock.

        Args:
            timeout: how long to wait for the lock (a close's bounded wait).

        Returns:
            True when the lock was free within ``timeout`` (waits are back on), else False
            (busy waits keep giving up: whatever close applies next may be journaled).
        """
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self._abort_waits = False
        finally:
            self._lock.release()
        return True

    def close(self) -> list[str]:
        """Close the connection (never one inherited across fork). Returns errors, if any."""
        conn, self._conn = self._conn, None
        if conn is None or self._pid != os.getpid():
            return []
        with FORK_GATE.section():
            try:
                conn.close()
            except apsw.Error as err:
                with contextlib.suppress(apsw.Error):
                    conn.close(True)
                return [f"close: {type(err).__name__}: {err}"]
        return []

    def forget_after_fork(self) -> apsw.Connection | None:
        """In a forked child: drop the parent's connection (returned, never to be closed here)."""
        conn, self._conn = self._conn, None
        self._lock = threading.Lock()  # may have been held by a thread that does not exist here
        self._checkpointer = None
        self._deadline = None
        return conn

    # ------------------------------------------------------------------ transactions

    def apply(self, op: Op, *, deadline: float | None = None) -> Any:
        """Apply one op in its own ``BEGIN IMMEDIATE`` transaction, retried on BUSY.

        Args:
            op: the op.
            deadline: return by then (writer's clock) even if ``write_deadline_s`` is later.

        Raises:
            SessionNotFoundError, InvalidTransitionError: the op is wrong; nothing changed.
            StoreBusyError: still locked at the deadline (by another process, or by another
                thread of this one); nothing changed.
            apsw.Error: anything else from SQLite; nothing changed.
        """
        return self.call(op.kind, handler(op), op, deadline=deadline)

    def call(
        self,
        kind: str,
        fn: Callable[[apsw.Connection, A], T],
        arg: A,
        *,
        deadline: float | None = None,
    ) -> T:
        """``fn(connection, arg)`` in its own ``BEGIN IMMEDIATE`` transaction, retried on BUSY.

        What :meth:`apply` does for an op, for a write that needs none to be applied (a
        heartbeat: see ``WriteRouter.write_call``). ``kind`` names it in errors.

        Raises:
            What :meth:`apply` raises.
        """
        # Every write takes this path, so it is written flat: no closures, no wrapper around
        # the first attempt (each layer cost a measurable share of a 10 us write). The
        # general path (_under_lock, _transact) serves batches and checkpoints.
        start = self._clock()
        own_end = start + self._deadline_s
        end = own_end if deadline is None else min(own_end, deadline)
        if deadline is None and _get_ident() == FORK_GATE.main_ident:
            with self._lock:  # C code: see _lock_wait for why the main thread waits this way
                return self._call_locked(kind, fn, arg, start, end)
        if not self._lock.acquire(timeout=max(0.0, end - start)):
            # Another thread of this process holds the writer past this call's deadline.
            raise StoreBusyError(self.path, kind, self._clock() - start)
        try:
            return self._call_locked(kind, fn, arg, start, end)
        finally:
            self._lock.release()

    def _call_locked(
        self,
        kind: str,
        fn: Callable[[apsw.Connection, A], T],
        arg: A,
        start: float,
        end: float,
    ) -> T:
        """One write's transaction, the writer's lock held: first attempt bare, retries on BUSY."""
        conn = self._conn
        if conn is None or (self._checkpointer is None and self._checkpoint_run is not None):
            conn = self.connection_locked()  # first use, or the timer thread not started yet
        if self._sqlite_handler:  # its timeout is cut to what is left before each attempt
            one = functools.partial(_one_transaction, conn, fn, arg)
            result = self._transact(conn, one, kind, end)
            self.applied += 1
            return result
        try:
            section = FORK_GATE.local.lock  # FORK_GATE.section() without a call, when it can
        except AttributeError:
            section = FORK_GATE.section()
        self._deadline = end
        self._busy_timeout_ms = self._default_busy_ms  # whatever an interrupted call left
        try:
            # _one_transaction, written out: a call less on every write.
            with section, conn:
                result = fn(conn, arg)
        except apsw.BusyError as err:
            try:
                result = self._policy.after_busy(
                    functools.partial(self._attempt, conn, fn, arg),
                    err,
                    path=self.path,
                    operation=kind,
                    start=start,
                    end=end,
                    abort=self._aborted,
                )
            finally:
                self._deadline = None
                self._end_leftover_transaction(conn)
        except BaseException as err:
            # Whatever raised (an op error, SQLite, a signal handler's exception anywhere in
            # the call), no transaction outlives it.
            self._deadline = None
            hook_error = _hook_error(conn, err)
            self._end_leftover_transaction(conn)
            if hook_error is not None:
                raise hook_error from None
            raise
        else:
            # Returned normally: ``with conn:`` committed, so there is nothing to end. (Checking
            # anyway cost a fork-gate section and a call into SQLite on every write.)
            self._deadline = None
        self.applied += 1  # under the writer's lock, which counts for the router (no lock)
        return result

    @staticmethod
    def _attempt(conn: apsw.Connection, fn: Callable[[apsw.Connection, A], T], arg: A) -> T:
        with FORK_GATE.section():
            return _one_transaction(conn, fn, arg)

    @staticmethod
    def _lock_wait(wait: float, *, explicit: bool) -> float:
        """How long to wait for :attr:`lock`: -1 (no limit) in the main thread unless bounded.

        Only ``with lock:`` (C code) cannot be split by a signal handler's exception between
        taking the lock and protecting it, and it cannot wait with a timeout. So the main
        thread's ordinary writes wait without one: the holder is another thread's call,
        itself bounded by its own deadline. A timed wait (``acquire(timeout=)``, then ``try``)
        is used in other threads, which signal handlers never interrupt, and in the main
        thread only where the caller bounds the call explicitly (``close()``, replay): there an
        exception landing in the two bytecodes between the two would leave the lock taken.
        """
        if explicit or threading.current_thread() is not threading.main_thread():
            return wait
        return -1.0

    def _under_lock(
        self, fn: Callable[[], T], wait: float, timed_out: Callable[[], Exception]
    ) -> T:
        """``fn()`` holding :attr:`lock`, waited for at most ``wait`` seconds (-1: no limit)."""
        if wait < 0:
            with self._lock:
                return fn()
        if not self._lock.acquire(timeout=wait):
            raise timed_out()
        try:
            return fn()
        finally:
            self._lock.release()

    def apply_batch(
        self, ops: Sequence[Op], *, lock_timeout: float = -1, deadline: float | None = None
    ) -> list[Exception | None]:
        """Apply ops in transactions of up to ``BATCH``, each op in its own savepoint.

        Args:
            ops: the ops, applied in order.
            lock_timeout: how long to wait for this process's writer lock (-1: no limit but
                the deadline).
            deadline: stop by then (writer's clock); each transaction is also bounded by
                ``write_deadline_s`` from its start.

        Returns:
            Per op, None (applied) or the error that rejected it (its savepoint rolled back).

        Raises:
            TimeoutError: the writer lock stayed held past ``lock_timeout`` or the deadline;
                nothing applied.
            BatchDeadlineError: the deadline came before a transaction (the first included);
                its ``results`` are those of the ops before ``len(results)`` (committed), the
                rest were not tried.
            StoreBusyError, apsw.Error: a transaction could not commit (locked at the
                deadline, or an error); nothing of that transaction was applied (earlier
                ones were).
        """
        wait = -1.0 if deadline is None else max(0.0, deadline - self._clock())
        if lock_timeout >= 0:
            wait = lock_timeout if wait < 0 else min(wait, lock_timeout)
        if deadline is None and lock_timeout < 0:
            wait = self._lock_wait(self._left(self._end(None)), explicit=False)

        def locked() -> list[Exception | None]:
            errors: list[Exception | None] = []
            conn = self.connection_locked()
            start, size, pace = 0, BATCH if deadline is None else FIRST_TIMED_BATCH, 0.0
            while start < len(ops):
                began = self._clock()
                if deadline is not None:
                    if began >= deadline:
                        # Earlier transactions committed; the caller keeps the rest (a journal
                        # replay leaves the journal in place; op ids make the redo harmless).
                        # The first is checked too: a call begun past its deadline tries nothing.
                        raise BatchDeadlineError(self.path, errors, len(ops))
                    if start:
                        size = _timed_size(size, pace, deadline - began)
                chunk = ops[start : start + size]
                body = functools.partial(_savepoint_each, conn, chunk)
                errors.extend(self._transact(conn, body, "apply batch", self._end(deadline)))
                pace = (self._clock() - began) / len(chunk)
                start += len(chunk)
            return errors

        return self._under_lock(
            locked, wait, lambda: TimeoutError("the writer lock is held by another thread")
        )

    def _transact(
        self, conn: apsw.Connection, body: Callable[[], T], operation: str, end: float
    ) -> T:
        """Run ``body`` (one whole transaction) under the retry policy until ``end``."""
        self._deadline = end
        self._busy_timeout_ms = self.config.busy_timeout_ms  # whatever an interrupted call left
        sqlite_handler = self.config.busy_handler == "sqlite"

        def attempt() -> T:
            with FORK_GATE.section():
                if sqlite_handler:  # SQLite's own handler: cut its timeout to what is left
                    conn.set_busy_timeout(int(self._wait_ms()))
                return body()

        try:
            return self._policy.call(
                attempt, path=self.path, operation=operation, abort=self._aborted, deadline=end
            )
        finally:
            self._deadline = None
            if sqlite_handler:
                with contextlib.suppress(apsw.Error):
                    conn.set_busy_timeout(self.config.busy_timeout_ms)
            self._end_leftover_transaction(conn)

    def _end_leftover_transaction(self, conn: apsw.Connection) -> None:
        # Second line of defence: whatever raised, no transaction outlives the call. A ROLLBACK
        # that fails (interrupted, I/O error) leaves the connection unusable for writes, so it is
        # closed, which rolls back; the next write opens a new one.
        with FORK_GATE.section():
            try:
                if not conn.txn_state():
                    return  # the usual case: apsw's ``with conn:`` ended it
                conn.execute("ROLLBACK")
                if not conn.txn_state():
                    return
            except apsw.ConnectionClosedError:
                return
            except apsw.Error:
                log.exception("rollback failed; closing the write connection")
            if self._conn is conn:
                self._conn = None
            with contextlib.suppress(apsw.Error):
                conn.close(True)

    # ------------------------------------------------------------------ checkpoints

    def start_checkpointer(self, run: Callable[[], CheckpointResult | None]) -> None:
        """Run ``run`` every interval on a timer thread (it returns None to end the thread)."""
        with self._lock:
            self._checkpoint_run = run
            if self._checkpointer is None:
                self._start_checkpointer(run)

    def _start_checkpointer(self, run: Callable[[], CheckpointResult | None]) -> None:
        schedule = CheckpointSchedule(
            self.config.checkpoint_interval_s, self.config.checkpoint_wal_bytes, self._clock()
        )
        self._checkpointer = Checkpointer(schedule, run, clock=self._clock)
        self._checkpointer.start()

    def stop_checkpointer(self, timeout: float) -> None:
        """End the timer thread (waits for it at most ``timeout``); it is not restarted."""
        self._checkpoint_run = None
        if self._checkpointer is not None:
            self._checkpointer.stop(timeout=timeout)

    def checkpoint(self, mode: str, *, lock_timeout: float = -1) -> CheckpointResult | None:
        """Checkpoint now, between write transactions. Never raises for BUSY.

        Returns:
            The result, or None when the writer lock stayed held past ``lock_timeout``.

        Raises:
            StoreCorruptError, StoreOpenError, StoreBusyError: the connection could not open.
            apsw.Error: the checkpoint failed for another reason than BUSY.
        """
        try:
            return self._under_lock(
                lambda: self._checkpoint_gated(self.connection_locked(), mode),
                lock_timeout,
                TimeoutError,
            )
        except TimeoutError:
            return None

    def _checkpoint_gated(self, conn: apsw.Connection, mode: str) -> CheckpointResult:
        with FORK_GATE.section():
            # A close that abandoned a lease interrupted this connection; if no statement was
            # running then, the flag is still set and would fail the checkpoint ("interrupted").
            # A statement started with none running clears it.
            with contextlib.suppress(apsw.InterruptError):
                conn.execute("SELECT 1").fetchall()
            return self.checkpoint_locked(conn, mode)

    def checkpoint_locked(self, conn: apsw.Connection, mode: str) -> CheckpointResult:
        """Checkpoint on ``conn``, whose lock the caller holds, with the short busy wait."""
        # Short wait: a waiting TRUNCATE holds the write lock and stalls other writers.
        self._busy_timeout_ms = self.config.checkpoint_busy_timeout_ms
        if self.config.busy_handler == "sqlite":
            conn.set_busy_timeout(self.config.checkpoint_busy_timeout_ms)
        try:
            result = run_checkpoint(conn, mode, self._wal_path)
        finally:
            self._busy_timeout_ms = self.config.busy_timeout_ms
            if self.config.busy_handler == "sqlite":
                conn.set_busy_timeout(self.config.busy_timeout_ms)
        self.checkpoints += 1
        self.last_checkpoint = result
        return result

    def _on_commit(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        # Runs right after each commit, in the committing thread, with the database write lock
        # released and our lock still held: exactly "between two write transactions on the
        # writer's own connection". The commit has happened whatever this does, so nothing
        # here may raise into the caller's write.
        if self._last_pages <= pages < self._passive_at_pages and pages <= self._limit_pages:
            self._last_pages = pages  # the usual commit: the WAL grew, below every threshold
            return apsw.SQLITE_OK
        try:
            if pages < self._last_pages:
                self._passive_at_pages = AUTOCHECKPOINT_PAGES  # the WAL restarted
            self._last_pages = pages
            checkpointer = self._checkpointer
            wal_bytes = pages * self._page_size
            if checkpointer is not None and wal_bytes > self.config.checkpoint_wal_bytes:
                if checkpointer.due_for_size(wal_bytes):
                    # RESTART, not TRUNCATE: the same bound (it takes the write lock, so the
                    # next commit starts the WAL from its beginning, and journal_size_limit
                    # cuts the file back), without shrinking the file to 0 only to grow it
                    # again at once: truncating every 4 MiB cost a single writer 20-40 % of
                    # its throughput. The timer and close() still TRUNCATE to 0.
                    result = self.checkpoint_locked(conn, "RESTART")
                    # Busy within a millisecond: another process holds the checkpoint lock
                    # (it is checkpointing right now), not a reader pinning the WAL.
                    collided = not result.ok and result.duration_s < 0.001
                    checkpointer.record(result.ok, collided=collided)
                    if collided:
                        # That checkpoint may be waiting for the write lock, which this process
                        # and the others keep taking back (fair hand-off favours no one), while
                        # the WAL grows. Stepping back for a moment lets it through. Pacing,
                        # not synchronisation: SQLite has no way to wait for another
                        # process's checkpoint.
                        time.sleep(_YIELD_TO_CHECKPOINT_S)
                # else: backing off after a busy RESTART. No PASSIVE meanwhile: it would hold
                # the checkpoint lock that another process's RESTART needs.
            elif pages >= self._passive_at_pages and not self._restart_soon(checkpointer, pages):
                # set_wal_hook replaced SQLite's auto-checkpoint; do what it would have done,
                # but once per AUTOCHECKPOINT_PAGES of growth rather than on every commit past
                # the threshold (SQLite's way keeps the checkpoint lock busy all the time).
                self._passive_at_pages = pages + AUTOCHECKPOINT_PAGES
                self.passive_checkpoints += 1
                with contextlib.suppress(apsw.BusyError):
                    conn.wal_checkpoint(dbname, apsw.SQLITE_CHECKPOINT_PASSIVE)
        except Exception:
            log.exception("checkpoint after commit failed")
        return apsw.SQLITE_OK

    def _restart_soon(self, checkpointer: Checkpointer | None, pages: int) -> bool:
        # A PASSIVE within AUTOCHECKPOINT_PAGES of the size limit does nothing the RESTART
        # will not do moments later, and it holds the checkpoint lock while it copies: with the
        # defaults (1000 pages, 4 MiB = 1024 pages) every process ran one right before the limit,
        # and the TRUNCATEs that followed found the lock taken ("busy" in 0.1 ms) and backed
        # off while the WAL kept growing (measured: 76 of 81 TRUNCATEs of one writer collided,
        # WAL peak 11.7 MiB with 8 writers and a polling reader).
        if checkpointer is None:
            return False  # no size-triggered checkpoint: PASSIVE is all there is
        limit_pages = self.config.checkpoint_wal_bytes // self._page_size
        return limit_pages - pages < AUTOCHECKPOINT_PAGES


def _timed_size(size: int, pace: float, left: float) -> int:
    """Ops for the next transaction of a timed batch: as many as fit in half of ``left``.

    ``pace`` is the last transaction's seconds per op (0 on a clock that stood still: then
    twice the last size, up to ``BATCH``).
    """
    if pace <= 0:
        return min(BATCH, 2 * size)
    return max(1, min(BATCH, int(left / 2 / pace)))


def _one_transaction(conn: apsw.Connection, fn: Callable[[apsw.Connection, A], T], arg: A) -> T:
    """``fn(conn, arg)`` in its own transaction: ``in_transaction`` for one write, no closure."""
    try:
        with conn:
            result = fn(conn, arg)
    except apsw.SQLError as err:
        hook_error = _hook_error(conn, err)
        if hook_error is None:
            raise
        raise hook_error from None
    return result


def _hook_error(conn: apsw.Connection, err: BaseException) -> BaseException | None:
    """What a signal handler raised inside the commit hook, if that is what ``err`` hides.

    See ``in_transaction`` (``_connection``): apsw then reports the COMMIT, which did happen,
    as a failed "SQL logic error". To be asked before any rollback: the transaction is over.
    """
    if not isinstance(err, apsw.SQLError):
        return None
    hook_error = err.__context__
    if hook_error is None or isinstance(hook_error, apsw.Error):
        return None
    with FORK_GATE.section():
        open_txn = conn.txn_state()
    return None if open_txn else hook_error


def _savepoint_each(conn: apsw.Connection, ops: Sequence[Op]) -> list[Exception | None]:
    """One transaction; each op in a savepoint so a rejected op leaves the others applied."""

    def body() -> list[Exception | None]:
        out: list[Exception | None] = []
        for op in ops:
            try:
                with conn:  # nested: a savepoint, rolled back to and released in C on error
                    apply(op, conn)
            except (*OP_ERRORS, apsw.ConstraintError) as err:
                out.append(err)
            else:
                out.append(None)
        return out

    return in_transaction(conn, body)
