"""Where a write goes: applied now, queued while closing, journaled, kept aside, or unrecorded.

The design's central promise is that a write method never raises because the store is
closing or closed, and that nothing acknowledged is lost. This module is where that promise
is kept, for every write of a store:

- **applied now**: the store is OPEN and the op commits (``BEGIN IMMEDIATE`` on the writer);
- **queued**: the store is CLOSING; the gate keeps the op and ``close()`` applies it
  (see ``_close``);
- **journaled**: the store is CLOSED, the closing queue is full, the database cannot take the
  write now (busy past the deadline, disk full, I/O error, corrupt, the connection closed
  under an abandoned lease), or a hard exit mid-close: the op goes to the fsynced journal
  beside the database, which the next open applies;
- **kept aside**: the database refused a queued op (its session is gone): the op goes to the
  rejected file with its reason, never silently dropped;
- **unrecorded**: even the journal could not take it (disk full, journal at its bound): each
  op's JSON is logged at error level and ``stats().failures`` lists it.

A write that needs no op to be applied (a heartbeat) comes as a call (``write_call``): it is
applied the same way while the store is OPEN, and its op is built only to go anywhere else.

The decision by state is atomic with ``close()`` moving the state on (``Gate.admit_write``,
one lock); the decision by error is made here. :class:`WriteRouter` also keeps the counters
``stats()`` and ``CloseReport`` report and the ring of the last failures.
Rejected: keeping these paths as methods of the store (they were decided in four places
across two files, and the store was a 1,500-line class).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import apsw

from ._journal import JOURNAL_LOCK_WAIT_S, Journal
from ._leases import Gate, Lease
from ._models import OpFailure, StoreState
from ._ops import Op
from ._writer import OP_ERRORS, Writer
from .errors import SessionStoreError, StoreBusyError, StoreIOError, StoreReadOnlyError

__all__ = ["DEFERRED", "GONE_ERRORS", "Counters", "WriteRouter"]

log = logging.getLogger("sessionstore")

A = TypeVar("A")
DEFERRED = object()  # marker: the op was queued or journaled, not applied now

# Errors that mean the database cannot take a write now for a storage reason: journaled.
_STORAGE_ERRORS = (
    apsw.FullError,
    apsw.IOError,
    apsw.ReadOnlyError,
    apsw.CantOpenError,
    apsw.LockedError,
    OSError,
)
# Errors that mean the connection went away under an abandoned lease during close.
GONE_ERRORS = (apsw.ConnectionClosedError, apsw.InterruptError, apsw.ThreadingViolationError)
_FAILURES_KEPT = 100
Disposition = Literal["journaled", "rejected", "unrecorded"]


class Counters(NamedTuple):
    """What the router counted, read together (for ``stats()`` and ``CloseReport``)."""

    applied: int
    from_queue: int
    replayed: int
    journaled: int
    failures: list[OpFailure]


class WriteRouter:
    """Routes each write of one store, counts where they went, remembers the last failures.

    Thread-safe: the counters and the failure ring are guarded by one lock of their own,
    which is never held while SQLite or the journal runs.
    """

    def __init__(
        self, path: str, gate: Gate[Op], writer: Writer, journal: Journal, *, read_only: bool
    ) -> None:
        self._path = path
        self._gate = gate
        self._writer = writer
        self._journal = journal
        self._read_only = read_only
        self._lock = threading.Lock()
        self._applied = 0
        self._from_queue = 0
        self._replayed = 0
        self._journaled = 0
        self._failures: deque[OpFailure] = deque(maxlen=_FAILURES_KEPT)
        self._corrupt: str | None = None  # why writes stopped going to the database

    def after_fork(self, gate: Gate[Op]) -> None:
        """In a forked child: use the child's new gate and a new lock (the old may be held)."""
        self._gate = gate
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one write

    def write(self, op: Op) -> Any:
        """Apply ``op`` now, or queue it (closing), or journal it (closed / cannot land).

        Returns:
            What ``apply`` returned, or :data:`DEFERRED` (queued or journaled).

        Raises:
            StoreReadOnlyError: the store was opened read-only.
            SessionNotFoundError, InvalidTransitionError: the op was refused (store open).
            JournalFullError, StoreOpenError, StoreIOError: the op had to be journaled and the
                journal could not take it (see :meth:`journal`).
        """
        if self._read_only:
            raise StoreReadOnlyError(self._path, op.kind)
        if self._corrupt is not None:
            # Found corrupt earlier: nothing more is written into it; the journal keeps the ops
            # for the next open of a repaired (or restored) file.
            self.journal([op], f"database found corrupt: {self._corrupt}")
            return DEFERRED
        admission = self._gate.admit_write(op, op.kind)
        if type(admission) is not Lease:  # the store is closing or closed (tested first: rare)
            if admission == "queued":
                return DEFERRED
            reason = "store closed" if admission == "closed" else "pending queue full"
            self.journal([op], reason)
            return DEFERRED
        try:
            result = self._writer.apply(op)
        except OP_ERRORS:
            raise
        except Exception as err:
            return self._not_applied(op, err, admission)
        finally:
            self._gate.release(admission)
        return result  # counted by the writer, under the lock it held (see counters())

    def write_call(
        self,
        kind: str,
        fn: Callable[[apsw.Connection, A], Any],
        arg: A,
        make_op: Callable[[A], Op],
    ) -> Any:
        """``fn(connection, arg)`` now if the store is open, else ``write(make_op(arg))``.

        For a write that needs no op to be applied (a heartbeat: no op id is stored, and a
        replay is harmless): its op (an id, a model: most of a heartbeat's own cost) is built
        only when the write must be kept (queued, journaled) or cannot be taken as a call (a
        read-only or corrupt store, a group-commit writer). Either way it goes exactly where
        :meth:`write` sends ``make_op(arg)``, with the same errors; ``make_op`` must make the
        op that ``fn`` applies.

        Returns:
            What ``fn`` returned, or :data:`DEFERRED` (queued or journaled).

        Raises:
            What :meth:`write` raises.
        """
        if self._read_only:
            raise StoreReadOnlyError(self._path, kind)
        lease = None
        if self._corrupt is None and self._writer.takes_calls:
            lease = self._gate.admit_now(kind)
        if lease is None:
            return self.write(make_op(arg))
        try:
            return self._writer.call(kind, fn, arg)
        except OP_ERRORS:
            raise
        except Exception as err:
            return self._not_applied(make_op(arg), err, lease)
        finally:
            self._gate.release(lease)

    def _not_applied(self, op: Op, err: Exception, lease: Lease) -> Any:
        """After the writer raised ``err`` for ``op`` (admitted under ``lease``): journal it.

        Returns:
            :data:`DEFERRED`: the database cannot take the write now (busy past the deadline,
            corrupt, a storage error, the connection closed under an abandoned lease).

        Raises:
            Exception: ``err`` itself, when it is the caller's to see.
        """
        if isinstance(err, StoreBusyError):
            self.journal([op], str(err))
        elif isinstance(err, (apsw.CorruptError, apsw.NotADBError)):
            self._corrupt = f"{type(err).__name__}: {err}"
            log.error("%s is corrupt; further writes go to the journal: %s", self._path, err)
            self.journal([op], self._corrupt)
        elif isinstance(err, _STORAGE_ERRORS):
            # The database cannot take the write for a storage reason (disk full, I/O error,
            # the file or its directory not writable): journaled exactly as BUSY is.
            self.journal([op], f"{type(err).__name__}: {err}")
        elif isinstance(err, GONE_ERRORS) and (
            lease.abandoned or self._gate.state is not StoreState.OPEN
        ):
            self.journal([op], f"store closed under the write ({type(err).__name__})")
        else:
            raise err
        return DEFERRED

    # ------------------------------------------------------------------ journal, keep aside

    def journal(
        self, ops: Sequence[Op], reason: str, *, lock_wait_s: float = JOURNAL_LOCK_WAIT_S
    ) -> None:
        """Append ops to the durable journal and tell the caller through log and ``stats()``.

        ``lock_wait_s`` bounds the wait for the journal's file lock (a close passes what is
        left of its deadline).

        Raises:
            JournalFullError: the journal is at its size bound (the op is not recorded).
            JournalBusyError: another process held the journal's lock past ``lock_wait_s``.
            StoreOpenError: the journal is not a file this store may write (a link, a FIFO,
                another user's).
            StoreIOError: the journal itself could not be written (disk full, a file size
                limit, a directory made read-only); an ``OSError`` too. Each op's JSON is
                logged at error level first, and ``stats().failures`` lists it as unrecorded.
        """
        try:
            self._journal.append(ops, lock_wait_s=lock_wait_s)
        except Exception as err:
            detail = f"{type(err).__name__}: {err}"
            self.unrecorded(ops, f"{reason}; the journal could not be written: {detail}")
            if isinstance(err, OSError) and not isinstance(err, SessionStoreError):
                raise StoreIOError(self._path, "journal a write", detail) from err
            raise
        with self._lock:
            self._journaled += len(ops)
            self._fail(ops, "journaled", [reason] * len(ops))
        if self._gate.state is StoreState.OPEN:
            log.warning(
                "%d op(s) could not be applied to %s (%s); journaled for the next open",
                len(ops),
                self._path,
                reason,
            )

    def keep_aside(self, rejected: Sequence[tuple[Op, Exception]]) -> None:
        """Keep queued ops the database refused in the rejected file, with their reasons.

        Raises:
            StoreOpenError, OSError: the rejected file could not be written.
        """
        reasons = [f"rejected at close: {type(err).__name__}: {err}" for _, err in rejected]
        # Kept aside in the rejected file: never silently dropped.
        self._journal.keep_aside_ops([op for op, _ in rejected], reasons)
        with self._lock:
            self._fail([op for op, _ in rejected], "rejected", reasons)
        for op, err in rejected:
            log.warning("queued op %s (%s) rejected: %s", op.op_id, op.kind, err)

    def secure(
        self, ops: Sequence[Op], reason: str, *, lock_wait_s: float = JOURNAL_LOCK_WAIT_S
    ) -> str | None:
        """Journal ops that could not be applied; if even that fails, they are unrecorded.

        Never raises ``Exception``: this is the last place an op can go, and close must finish.

        Returns:
            None when journaled (or nothing to do), else why they are unrecorded (each op's
            JSON was logged at error level and listed in ``stats().failures``).
        """
        if not ops:
            return None
        try:
            self.journal(ops, reason, lock_wait_s=lock_wait_s)
        except Exception as err:  # logged and counted as unrecorded by journal()
            return f"{reason}; the journal could not be written: {type(err).__name__}: {err}"
        return None

    def unrecorded(self, ops: Sequence[Op], why: str) -> None:
        """Ops neither applied nor journaled: each one's JSON at error level, and stats()."""
        for op in ops:
            log.error(
                "op %s (%s) neither applied nor journaled (%s): %s",
                op.op_id,
                op.kind,
                why,
                op.line.decode().rstrip("\n"),
            )
        with self._lock:
            self._fail(ops, "unrecorded", [why] * len(ops))

    def journal_pending(self) -> int:
        """Move every queued op to the durable journal now (for a hard exit mid-close).

        Returns:
            How many ops were journaled.

        Raises:
            JournalFullError, StoreOpenError, StoreIOError: the journal could not take them;
                each op's JSON was logged at error level first.
        """
        ops = self._gate.drain_pending()
        if ops:
            try:
                self.journal(ops, "hard exit while closing")
            except Exception:
                raise  # journal() logged each op's JSON at error level
            except BaseException as err:
                # Interrupted inside the append: the process is about to exit, and the log is
                # the last place these ops can go.
                self.unrecorded(ops, f"hard exit while closing: {type(err).__name__}")
                raise
        return len(ops)

    def _fail(self, ops: Sequence[Op], disposition: Disposition, reasons: Sequence[str]) -> None:
        """Remember failures (caller holds the lock); ``time.time()``: a wall-clock stamp."""
        now = time.time()
        # Only the newest _FAILURES_KEPT can stay in the ring: build no record it would drop
        # (a close journaling a queue of 40,000 ops built 40,000 models to keep 100).
        kept = max(0, len(ops) - _FAILURES_KEPT)
        for op, reason in zip(ops[kept:], reasons[kept:], strict=True):
            self._failures.append(
                OpFailure(
                    op_id=op.op_id, kind=op.kind, disposition=disposition, reason=reason, at=now
                )
            )

    # ------------------------------------------------------------------ counters

    def count(self, *, applied: int = 0, from_queue: int = 0, replayed: int = 0) -> None:
        """Add ops applied elsewhere (a batch, the queue at close, a journal replay)."""
        with self._lock:
            self._applied += applied
            self._from_queue += from_queue
            self._replayed += replayed

    @property
    def journaled(self) -> int:
        """Ops this store journaled so far."""
        return self._journaled

    def counters(self) -> Counters:
        """Every counter and the failure ring, read together."""
        with self._lock:
            return Counters(
                self._applied + self._writer.applied,
                self._from_queue,
                self._replayed,
                self._journaled,
                list(self._failures),
            )
