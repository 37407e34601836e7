"""SessionStore: the typed API over ops, the closing gate, the pending queue and the journal."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

from ._config import StoreConfig
from ._connection import (
    RetryPolicy,
    open_connection,
    open_read_only,
    read_only_mode,
    translate_open_error,
)
from ._forkgate import FORK_GATE
from ._fscheck import warn_if_risky
from ._identity import ProcessIdentity, check_signal_target, read_process_info
from ._journal import Journal, apply_isolated
from ._leases import Gate, Lease
from ._migrate import FileKind, apply_migrations, identify, latest_version
from ._models import (
    Checkpoint,
    CheckpointResult,
    CheckpointWrite,
    ChildProcess,
    ChildState,
    CloseReport,
    Event,
    EventLevel,
    OpFailure,
    ReplayReport,
    Session,
    SessionStatus,
    StoreState,
    StoreStats,
)
from ._ops import (
    AddChild,
    CopySession,
    CreateSession,
    DeleteRuns,
    DeleteSession,
    Heartbeat,
    LogEvent,
    Op,
    PopCheckpoint,
    PruneCheckpoints,
    RemoveChild,
    SaveCheckpoint,
    SetStatus,
    checkpoint_from_op,
    child_from_op,
    event_from_op,
    owner_fields,
    session_from_create,
    session_id_for_key,
)
from ._readers import ReaderPool
from ._rows import (
    CHECKPOINT_COLUMNS,
    CHILD_COLUMNS,
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    checkpoint_from_row,
    child_from_row,
    event_from_row,
    session_from_row,
)
from ._threads import MAX_PAGE, find_checkpoints, get_writes, metadata_filter
from ._transaction import (
    Transaction,
    checkpoint_from_put,
    make_keyed_create,
    make_put_checkpoint,
    make_put_writes,
)
from ._writer import BATCH, OP_ERRORS, Writer
from .errors import (
    ProcessNotFoundError,
    SchemaVersionError,
    SessionNotFoundError,
    SessionStoreError,
    StoreBusyError,
    StoreClosedError,
    StoreCorruptError,
    StoreIOError,
    StoreOpenError,
    StoreReadOnlyError,
)

__all__ = ["ReadLease", "SessionStore", "live_stores"]

log = logging.getLogger("sessionstore")

if TYPE_CHECKING:
    from ._maintenance import BackupReport, PruneReport, VacuumReport

T = TypeVar("T")

_MAX_EVENTS_PAGE = 10_000
# close() returns within its timeout plus this grace (plus the final checkpoint's busy wait,
# ``checkpoint_busy_timeout_ms``, and closing the connections, a few milliseconds): the queue
# and the journal replay get at least CLOSE_GRACE_S after the lease drain, and each of the two
# waits for the writer to let go (_LET_GO_S) is bounded apart from it. The README derives the
# operator budgets (systemd, docker) from this.
CLOSE_GRACE_S = 0.25
_LET_GO_S = 0.1
_DEFERRED = object()  # marker: the op was queued or journaled, not applied now

# Errors that mean the connection went away under an abandoned lease during close.
_STORAGE_ERRORS = (
    apsw.FullError,
    apsw.IOError,
    apsw.ReadOnlyError,
    apsw.CantOpenError,
    apsw.LockedError,
    OSError,
)
_GONE_ERRORS = (apsw.ConnectionClosedError, apsw.InterruptError, apsw.ThreadingViolationError)

_live: weakref.WeakSet[SessionStore] = weakref.WeakSet()
# Connections inherited across fork: never closed or freed in the child (SQLite's close could
# delete state out from under the parent), so kept referenced here for the child's lifetime.
_inherited_at_fork: list[apsw.Connection] = []


QUICK_CHECK_MAX_BYTES = 4 << 20  # quick_check reads every page: about 1 ms per MiB here


def _probe_integrity(conn: apsw.Connection, path: str) -> str:
    """``PRAGMA quick_check`` at open, for files up to ``QUICK_CHECK_MAX_BYTES``.

    Catches the common corruptions (a torn or overwritten page, a broken index) before the
    first write lands on them. Larger files skip it (``doctor`` runs the full check).

    Raises:
        StoreCorruptError: the check found a problem; nothing was written.
    """
    size = int(conn.pragma("page_count")) * int(conn.pragma("page_size"))
    if size > QUICK_CHECK_MAX_BYTES:
        return f"skipped: {size} bytes, over {QUICK_CHECK_MAX_BYTES}"
    found = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if found != ["ok"]:
        raise StoreCorruptError(path, "quick_check: " + "; ".join(found[:5]))
    return "ok"


def _gated(fn: Callable[[apsw.Connection], T], conn: apsw.Connection) -> T:
    with FORK_GATE.section():  # no fork while this thread is inside SQLite (see _forkgate)
        return fn(conn)


def live_stores() -> list[SessionStore]:
    """Stores in this process that are not closed (tests use it to catch leaks)."""
    return [s for s in list(_live) if s.state is not StoreState.CLOSED]


class ReadLease:
    """A lease on a read connection for ad-hoc queries (``with store.lease() as lease``).

    After the store closed (or abandoned this lease at its close deadline) every use raises
    :class:`StoreClosedError`, never a crash or a hang.
    """

    def __init__(self, store: SessionStore, lease: Lease) -> None:
        self._store = store
        self._lease = lease

    @property
    def borrower(self) -> str:
        """Who holds this lease."""
        return self._lease.borrower

    def execute(self, sql: str, bindings: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one read-only statement and return all its rows (the cursor is drained at once).

        Raises:
            StoreClosedError: the store closed, or abandoned this lease.
            StoreBusyError: locked past the retry deadline.
            apsw.ReadOnlyError: the statement tried to write (read connections are
                ``query_only``; writes go through the store's methods).
        """
        if self._lease.abandoned or self._store.state is StoreState.CLOSED:
            raise StoreClosedError(
                self._store.path, "this lease was abandoned when the store closed"
            )
        return self._store._run_read(
            lambda conn: [tuple(r) for r in conn.execute(sql, bindings)], "lease.execute"
        )


class SessionStore:
    """Sessions, checkpoints, events and child processes in one SQLite file shared by processes.

    Open with :meth:`open` (or ``with SessionStore.open(path) as store``). Every method is safe
    to call from any thread. Writes are operation objects applied in ``BEGIN IMMEDIATE``
    transactions with the configured retry policy; while the store is closing they are queued
    and applied before the connection closes, and after it closed they are journaled durably
    beside the database and applied by the next :meth:`open` of that file, by any process.
    A write method therefore never raises because the store is closing or closed. Reads after
    close raise :class:`~sessionstore.StoreClosedError`.
    """

    def __init__(
        self,
        path: str,
        config: StoreConfig,
        *,
        clock: Callable[[], float],
        read_only: bool = False,
    ) -> None:
        """Use :meth:`SessionStore.open`; this only sets up state, it opens nothing."""
        self.path = path
        self.config = config
        self.read_only = read_only
        # Why a read-only store reads an immutable snapshot (None: a live, locked view).
        self.snapshot: str | None = None
        if read_only:
            own = any(s.path == path and not s.read_only for s in live_stores())
            self.snapshot = read_only_mode(path, config.busy_timeout_ms / 1000, probe_locks=not own)
        self._clock = clock
        self._policy = RetryPolicy(config.write_deadline_s, clock=clock)
        self._journal = Journal(path, max_bytes=config.max_journal_bytes)
        self._wal_path = f"{path}-wal"
        self._pid = os.getpid()
        self._init_locks()
        self._writer = Writer(path, config, self._policy, clock)
        self._readers = ReaderPool(
            lambda: open_connection(self.path, self.config, self._policy, query_only=True),
            config.read_connections,
        )
        self._close_report: CloseReport | None = None
        self._n_applied = 0
        self._n_from_queue = 0
        self._n_replayed = 0
        self._n_journaled = 0
        self._failures: deque[OpFailure] = deque(maxlen=100)
        self.open_replay: ReplayReport = ReplayReport()
        self._corrupt: str | None = None  # why writes stopped going to the database
        # What the integrity probe at open found: "ok", or why it was skipped.
        self.integrity_probe = "not run"

    def _init_locks(self) -> None:
        self._gate: Gate[Op] = Gate(self.config.max_pending_ops)
        self._close_lock = threading.Lock()
        self._counter_lock = threading.Lock()

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        config: StoreConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_only: bool = False,
    ) -> SessionStore:
        """Open (creating if needed) the store at ``path`` and bring its schema up to date.

        The journal left by closed stores is applied first (``config.replay_on_open``).

        Args:
            path: the database file. Its directory must exist and be on a local filesystem
                (WAL needs shared memory: not NFS/SMB, not a VM-boundary bind mount).
            config: settings; defaults to ``StoreConfig()``.
            clock: monotonic clock, injectable for tests of timing logic.
            read_only: never write anything: no file is created, migrated, checkpointed or
                replayed into, no journal is read or written, and no ``-wal``/``-shm`` is
                created (safe for another user to run on a shared database). Writes,
                ``checkpoint()`` and ``replay()`` raise :class:`StoreReadOnlyError`. When no
                process has the database open, it is read as an immutable snapshot
                (:attr:`snapshot` says so and why). Needs an existing store at the latest
                schema version.

        Returns:
            An OPEN store.

        Raises:
            StoreCorruptError: not a SQLite database, or corrupt; the file is left untouched.
            SchemaVersionError: written by a newer sessionstore; left untouched.
            ForeignDatabaseError: a SQLite file of another application (another
                ``application_id``, or tables that are not sessionstore's); left byte-identical,
                with no ``-wal``/``-shm`` beside it.
            StoreOpenError: cannot be opened (missing directory, permissions).
            StoreIOError: the disk failed while opening (I/O error, no room to grow).
            StoreBusyError: locked by other processes past the retry deadline.
        """
        config = config or StoreConfig()
        path_str = os.fspath(path)
        if path_str == ":memory:" or path_str.startswith("file:"):
            raise ValueError("SessionStore needs a file path shared by processes, not a URI")
        # Resolved once: every side file (-wal, -shm, the journal, the rejected file) is named
        # from the real path, so opening through a symlink and through the file itself share
        # one journal. Resolving again later could name another file if a link changed.
        store = cls(os.path.realpath(path_str), config, clock=clock, read_only=read_only)
        # Before anything writes:
        kind = identify(store.path, busy_timeout_ms=config.busy_timeout_ms)
        if read_only:
            store._open_read_only(kind)
            return store
        warn_if_risky(store.path)
        store._open()
        return store

    def _open_read_only(self, kind: FileKind) -> None:
        if kind is not FileKind.OURS:
            what = "no sessionstore database" if kind is FileKind.NEW else "an older schema"
            raise StoreOpenError(
                self.path,
                f"{what} here; a read-only open creates and migrates nothing (open it once "
                "read-write first)",
            )
        _live.add(self)
        try:
            [(version,)] = self._read("open", "PRAGMA user_version")
            if int(version) > latest_version():
                raise SchemaVersionError(self.path, int(version), latest_version())
            if int(version) < latest_version():
                raise StoreOpenError(
                    self.path,
                    f"schema version {version} is older than {latest_version()}; a read-only "
                    "open migrates nothing (open it once read-write first)",
                )
        except BaseException:
            self._abort_open()
            raise

    def _open(self) -> None:
        # A failed open leaves nothing behind: no live store, no checkpointer thread, no
        # connection. Replay failures do not fail it (see _replay_at_open).
        _live.add(self)
        try:
            self._journal.check()  # before anything is touched: a planted link is refused
            with self._writer.lock, FORK_GATE.section():
                try:
                    conn = self._writer.connection_locked()
                    self.integrity_probe = _probe_integrity(conn, self.path)
                    apply_migrations(conn, self.path, self._policy)
                except apsw.Error as err:
                    raise translate_open_error(self.path, err) from err
            if self.config.checkpointing:
                self._writer.start_checkpointer(self._scheduled_checkpoint)
            if self.config.replay_on_open:
                self.open_replay = self._replay_at_open()
            if self.config.reap_on_open:
                from .process import reap_orphans  # the process layer builds on the store

                reap_orphans(self)
        except BaseException:
            self._abort_open()
            raise

    def _abort_open(self) -> None:
        self._gate.force_closed()
        self._writer.stop_checkpointer(timeout=5.0)
        errors: list[str] = []
        self._close_connections(errors)
        _live.discard(self)
        for error in errors:
            log.warning("closing %s after a failed open: %s", self.path, error)

    def _replay_at_open(self) -> ReplayReport:
        """Replay the journal; no op, and no state of the database, ever makes open fail.

        Raises:
            StoreOpenError: the journal or rejected file is not safe to touch.
        """
        try:
            return self.replay()
        except StoreOpenError:
            raise
        except Exception as err:  # busy, disk, anything: the journal stays for the next open
            log.warning("journal of %s not replayed at open: %s", self.path, err)
            return ReplayReport(deferred=f"{type(err).__name__}: {err}")

    # ----------------------------------------------------------------------------- writing

    def _write(self, op: Op) -> Any:
        """Apply ``op`` now, or queue it (closing), or journal it (closed / cannot land).

        Returns:
            What ``apply`` returned, or ``_DEFERRED``.
        """
        if self.read_only:
            raise StoreReadOnlyError(self.path, op.kind)
        if self._corrupt is not None:
            # Found corrupt earlier: nothing more is written into it; the journal keeps the ops
            # for the next open of a repaired (or restored) file.
            self._journal_ops([op], f"database found corrupt: {self._corrupt}")
            return _DEFERRED
        admission = self._gate.admit_write(op, op.kind)
        if admission == "queued":
            return _DEFERRED
        if admission in ("closed", "overflow"):
            reason = "store closed" if admission == "closed" else "pending queue full"
            self._journal_ops([op], reason)
            return _DEFERRED
        assert isinstance(admission, Lease)
        try:
            result = self._writer.apply(op)
        except OP_ERRORS:
            raise
        except StoreBusyError as err:
            self._journal_ops([op], str(err))
            return _DEFERRED
        except (apsw.CorruptError, apsw.NotADBError) as err:
            self._corrupt = f"{type(err).__name__}: {err}"
            log.error("%s is corrupt; further writes go to the journal: %s", self.path, err)
            self._journal_ops([op], self._corrupt)
            return _DEFERRED
        except _STORAGE_ERRORS as err:
            # The database cannot take the write for a storage reason (disk full, I/O error,
            # the file or its directory not writable): journaled exactly as BUSY is.
            self._journal_ops([op], f"{type(err).__name__}: {err}")
            return _DEFERRED
        except _GONE_ERRORS as err:
            if not admission.abandoned and self._gate.state is StoreState.OPEN:
                raise
            self._journal_ops([op], f"store closed under the write ({type(err).__name__})")
            return _DEFERRED
        finally:
            self._gate.release(admission)
        with self._counter_lock:
            self._n_applied += 1
        return result

    def _journal_ops(self, ops: Sequence[Op], reason: str) -> None:
        """Append ops to the durable journal and tell the caller through log and ``stats()``.

        Raises:
            JournalFullError: the journal is at its size bound (the op is not recorded).
            StoreOpenError: the journal is not a file this store may write (a link, a FIFO,
                another user's).
            StoreIOError: the journal itself could not be written (disk full, a file size
                limit, a directory made read-only); an ``OSError`` too. Each op's JSON is
                logged at error level first, and ``stats().failures`` lists it as unrecorded.
        """
        try:
            self._journal.append(ops)
        except Exception as err:
            detail = f"{type(err).__name__}: {err}"
            self._unrecorded(ops, f"{reason}; the journal could not be written: {detail}")
            if isinstance(err, OSError) and not isinstance(err, SessionStoreError):
                raise StoreIOError(self.path, "journal a write", detail) from err
            raise
        now = time.time()
        with self._counter_lock:
            self._n_journaled += len(ops)
            for op in ops:
                self._failures.append(
                    OpFailure(
                        op_id=op.op_id, kind=op.kind, disposition="journaled", reason=reason, at=now
                    )
                )
        if self._gate.state is StoreState.OPEN:
            log.warning(
                "%d op(s) could not be applied to %s (%s); journaled for the next open",
                len(ops),
                self.path,
                reason,
            )

    def _record_rejected(self, rejected: Sequence[tuple[Op, Exception]]) -> None:
        """Keep queued ops the database refused in the rejected file, with their reasons.

        Raises:
            StoreOpenError, OSError: the rejected file could not be written.
        """
        reasons = [f"rejected at close: {type(err).__name__}: {err}" for _, err in rejected]
        # Kept aside in the rejected file: never silently dropped.
        self._journal.keep_aside_ops([op for op, _ in rejected], reasons)
        now = time.time()
        with self._counter_lock:
            for (op, _), reason in zip(rejected, reasons, strict=True):
                self._failures.append(
                    OpFailure(
                        op_id=op.op_id, kind=op.kind, disposition="rejected", reason=reason, at=now
                    )
                )
        for op, err in rejected:
            log.warning("queued op %s (%s) rejected: %s", op.op_id, op.kind, err)

    def _secure(self, ops: Sequence[Op], reason: str, out: _DrainOutcome) -> None:
        """Journal ops the drain could not apply; if even that fails, report them unrecorded.

        Never raises: this is the last place an op can go, and close must finish.
        """
        if not ops:
            return
        try:
            self._journal_ops(ops, reason)
        except Exception as err:  # logged and counted as unrecorded by _journal_ops
            why = f"{reason}; the journal could not be written: {type(err).__name__}: {err}"
            out.errors.append(f"{len(ops)} queued op(s) neither applied nor journaled: {why}")
            out.unrecorded.extend(op.line.decode().rstrip("\n") for op in ops)

    def _unrecorded(self, ops: Sequence[Op], why: str) -> None:
        """Ops neither applied nor journaled: each one's JSON at error level, and stats()."""
        now = time.time()
        for op in ops:
            log.error(
                "op %s (%s) neither applied nor journaled (%s): %s",
                op.op_id,
                op.kind,
                why,
                op.line.decode().rstrip("\n"),
            )
        with self._counter_lock:
            for op in ops:
                self._failures.append(
                    OpFailure(
                        op_id=op.op_id, kind=op.kind, disposition="unrecorded", reason=why, at=now
                    )
                )

    # ----------------------------------------------------------------------------- reading

    def _run_read(self, fn: Callable[[apsw.Connection], T], borrower: str) -> T:
        lease = self._gate.acquire(borrower)
        if lease is None:
            raise StoreClosedError(self.path)
        try:
            if self.read_only:
                return self._read_fresh(fn, borrower)
            with self._readers.connection() as conn:
                return self._policy.call(
                    lambda: _gated(fn, conn), path=self.path, operation=borrower
                )
        except _GONE_ERRORS as err:
            raise StoreClosedError(self.path, f"store closed during {borrower}") from err
        except (apsw.CorruptError, apsw.NotADBError) as err:
            raise StoreCorruptError(self.path, f"{type(err).__name__}: {err}") from err
        finally:
            self._gate.release(lease)

    def _read_fresh(self, fn: Callable[[apsw.Connection], T], borrower: str) -> T:
        # A read-only store opens a connection per read: whether it may read live (another
        # process has the database open) or only as an immutable snapshot can change between
        # two reads, and a snapshot connection would never see later commits (`events
        # --follow`). About 0.1 ms a read, for a store that never writes.
        # Never probe locks on a file this process has open read-write (see read_only_mode).
        own = any(s.path == self.path and not s.read_only for s in live_stores())
        self.snapshot = read_only_mode(
            self.path, self.config.busy_timeout_ms / 1000, probe_locks=not own
        )
        conn = open_read_only(self.path, self.config, snapshot=self.snapshot is not None)
        try:
            return self._policy.call(lambda: _gated(fn, conn), path=self.path, operation=borrower)
        finally:
            conn.close()

    def _read(self, borrower: str, sql: str, bindings: Sequence[Any] = ()) -> list[Any]:
        return self._run_read(lambda conn: conn.execute(sql, bindings).fetchall(), borrower)

    @contextlib.contextmanager
    def lease(self, borrower: str = "user") -> Iterator[ReadLease]:
        """Hold a read lease for ad-hoc queries; ``close()`` waits for it (up to its timeout).

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        lease = self._gate.acquire(borrower)
        if lease is None:
            raise StoreClosedError(self.path)
        try:
            yield ReadLease(self, lease)
        finally:
            self._gate.release(lease)

    # ----------------------------------------------------------------------------- sessions

    def create_session(
        self, name: str, objective: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Session:
        """Create an ACTIVE session owned by this process (its identity is recorded).

        Raises:
            ValueError: empty or too long name, or metadata not a JSON-serialisable dict.
        """
        op = CreateSession(
            name=name, objective=objective, metadata=metadata or {}, **owner_fields()
        )
        self._write(op)
        return session_from_create(op)

    def get_session(self, session_id: str) -> Session:
        """Return one session.

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        rows = self._read(
            "get_session", f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        )
        if not rows:
            raise SessionNotFoundError(session_id)
        return session_from_row(rows[0])

    def list_sessions(self, status: SessionStatus | str | None = None) -> list[Session]:
        """Return sessions, oldest first, optionally only those with ``status``.

        Raises:
            ValueError: unknown status.
            StoreClosedError: the store is closing or closed.
        """
        if status is None:
            rows = self._read(
                "list_sessions", f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, id"
            )
        else:
            rows = self._read(
                "list_sessions",
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status = ? ORDER BY created_at, id",
                (SessionStatus(status).value,),
            )
        return [session_from_row(r) for r in rows]

    def set_status(self, session_id: str, status: SessionStatus | str) -> None:
        """Move a session to ``status`` (see pause/resume/stop for the usual ones).

        Raises:
            SessionNotFoundError: no such session (checked while the store is open).
            InvalidTransitionError: e.g. pausing a stopped session; nothing changed.
            ValueError: unknown status.
        """
        self._write(SetStatus(session_id=session_id, status=SessionStatus(status)))

    def pause_session(self, session_id: str) -> None:
        """Mark a session PAUSED (it may be resumed). Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.PAUSED)

    def resume_session(self, session_id: str) -> None:
        """Mark a paused, stopped or crashed session ACTIVE again. Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.ACTIVE)

    def stop_session(self, session_id: str) -> None:
        """Mark a session STOPPED. Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.STOPPED)

    def heartbeat(self, session_id: str) -> None:
        """Record that the session's owner is alive now.

        Raises:
            SessionNotFoundError: no such session (checked while the store is open).
        """
        self._write(Heartbeat(session_id=session_id))

    # ----------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, session_id: str, name: str, data: Any) -> Checkpoint:
        """Save a named JSON snapshot of the session.

        Raises:
            ValueError: empty/too long name, or data not JSON-serialisable (NaN included).
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = SaveCheckpoint(session_id=session_id, name=name, data=data)
        self._write(op)
        return checkpoint_from_op(op)

    def latest_checkpoint(self, session_id: str, name: str | None = None) -> Checkpoint | None:
        """Return the newest checkpoint of the session (with that name, if given), or None.

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        found = self.list_checkpoints(session_id, name=name, limit=1, newest_first=True)
        return found[0] if found else None

    def list_checkpoints(
        self,
        session_id: str,
        *,
        name: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Checkpoint]:
        """Return the session's checkpoints (oldest first unless ``newest_first``).

        Raises:
            SessionNotFoundError: no such session.
            ValueError: ``limit`` < 1.
            StoreClosedError: the store is closing or closed.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        order = "DESC" if newest_first else "ASC"
        where = "session_id = ?" + (" AND name = ?" if name is not None else "")
        params: tuple[Any, ...] = (session_id,) if name is None else (session_id, name)
        sql = (
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE {where} "
            f"ORDER BY created_at {order}, id {order} LIMIT ?"
        )
        rows = self._read("list_checkpoints", sql, (*params, -1 if limit is None else limit))
        if not rows:
            self.get_session(session_id)  # SessionNotFoundError for an unknown id
        return [checkpoint_from_row(r) for r in rows]

    # ----------------------------------------------------------------------------- threads

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Collect writes and apply them all or nothing: ``with store.transaction() as tx:``.

        On leaving the block normally, every op of ``tx`` is written as one unit: one
        ``BEGIN IMMEDIATE`` transaction while the store is open, one queued entry while it
        closes, one journal line after it closed (replayed as one transaction). If the block
        raises, nothing is written and the exception propagates. A ``tx`` method given bad
        input raises ``ValueError`` at once and adds nothing.

        Raises:
            SessionNotFoundError, InvalidTransitionError: an op was refused when applied (store
                open); nothing of the transaction was applied.
        """
        tx = Transaction()
        try:
            yield tx
        except BaseException:
            tx._finish()  # discarded: nothing applied, queued or journaled
            raise
        batch = tx._finish()
        if batch is not None:
            self._write(batch)

    def get_or_create_session_by_key(
        self,
        key: str,
        *,
        name: str | None = None,
        objective: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        """Return the session of a caller's key (a thread or conversation id), creating it.

        Race-free across processes: the session id is derived from the key, and creating it
        is ``INSERT ... ON CONFLICT DO NOTHING`` in ``BEGIN IMMEDIATE``, so any number of
        processes asking for one new key at once get one session. ``name`` (default: the key),
        ``objective`` and ``metadata`` are used only when it is created. A deleted session's
        key makes a new session (deletion is ordered by op time, see :meth:`delete_session`).

        Returns:
            The session as stored (the first creator's); while the store is closing or closed,
            the session as this call's op would create it (queued or journaled).

        Raises:
            ValueError: a key, name or metadata the rules refuse.
        """
        op = make_keyed_create(key, name, objective, metadata)
        self._write(op)
        if self._gate.state is StoreState.OPEN:
            with contextlib.suppress(StoreClosedError, SessionNotFoundError):
                return self.get_session(op.session_id)
        return session_from_create(op)

    def find_session_by_key(self, key: str) -> Session | None:
        """Return the session of a caller's key, or None.

        Raises:
            ValueError: not a valid key.
            StoreClosedError: the store is closing or closed.
        """
        try:
            return self.get_session(session_id_for_key(key))
        except SessionNotFoundError:
            return None

    def put_checkpoint(
        self,
        session_id: str,
        checkpoint_id: str,
        data: Any = None,
        *,
        namespace: str = "",
        parent_id: str | None = None,
        name: str = "checkpoint",
        metadata: dict[str, Any] | None = None,
        blob: bytes | None = None,
        run_id: str | None = None,
    ) -> Checkpoint:
        """Insert or update the checkpoint ``(session_id, namespace, checkpoint_id)``.

        Args:
            session_id: the session (thread).
            checkpoint_id: the caller's id; ids should sort in creation order (uuid6/uuid7),
                since reads list newest first by id.
            data: a JSON payload.
            namespace: separates checkpoint histories within one session (subgraphs).
            parent_id: the checkpoint this one follows.
            name: a label.
            metadata: a JSON object, filterable by :meth:`find_checkpoints`.
            blob: a binary payload.
            run_id: the run that made it (see :meth:`delete_runs`).

        Upsert, last writer wins on the op's time: an older put applied late changes nothing.

        Raises:
            ValueError: a field the op rules refuse.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = make_put_checkpoint(
            session_id,
            checkpoint_id,
            data,
            namespace=namespace,
            parent_id=parent_id,
            name=name,
            metadata=metadata,
            blob=blob,
            run_id=run_id,
        )
        self._write(op)
        return checkpoint_from_put(op)

    def get_checkpoint(
        self, session_id: str, checkpoint_id: str, *, namespace: str = ""
    ) -> Checkpoint | None:
        """Return one checkpoint by the caller's id, or None (also for an unknown session).

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        found = self.find_checkpoints(
            session_id, namespace=namespace, checkpoint_id=checkpoint_id, limit=1
        )
        return found[0] if found else None

    def find_checkpoints(
        self,
        session_id: str | None = None,
        *,
        namespace: str | None = None,
        name: str | None = None,
        checkpoint_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> list[Checkpoint]:
        """Return checkpoints newest first (by checkpoint id), filtered by every given argument.

        Args:
            session_id: one session, or None for every session.
            namespace: one namespace, or None for all.
            name: only checkpoints with this name (label).
            checkpoint_id: one checkpoint id.
            metadata: each key's value must equal (as JSON) the checkpoint's metadata value.
            run_id: made by this run.
            before: only checkpoints whose id sorts before this one.
            limit: at most this many (1..100000), or None for all.

        Returns:
            The matches; empty (never an error) for an unknown session.

        Raises:
            ValueError: ``limit`` out of range, or a bad metadata filter.
            StoreClosedError: the store is closing or closed.
        """
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}")
        if metadata:
            metadata_filter(metadata)  # ValueError before anything is read
        return self._run_read(
            lambda conn: find_checkpoints(
                conn,
                session_id=session_id,
                namespace=namespace,
                name=name,
                checkpoint_id=checkpoint_id,
                metadata=metadata,
                run_id=run_id,
                before=before,
                limit=limit,
            ),
            "find_checkpoints",
        )

    def put_writes(
        self,
        session_id: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[tuple[int, str, str | None, bytes | None]],
        *,
        namespace: str = "",
        task_path: str = "",
        replace: bool = False,
    ) -> None:
        """Record writes ``(idx, channel, type, blob)`` of a task, attached to a checkpoint.

        Idempotent on ``(task_id, idx)``: a write already there is kept, unless ``replace``
        (last writer wins on the op's time).

        Raises:
            ValueError: a write the op rules refuse.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        self._write(
            make_put_writes(
                session_id,
                checkpoint_id,
                task_id,
                writes,
                namespace=namespace,
                task_path=task_path,
                replace=replace,
            )
        )

    def checkpoint_writes(
        self, session_id: str, checkpoint_id: str, *, namespace: str = ""
    ) -> list[CheckpointWrite]:
        """Return a checkpoint's writes, by task id then idx (empty if none).

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        return self._run_read(
            lambda conn: get_writes(conn, session_id, namespace, checkpoint_id),
            "checkpoint_writes",
        )

    def delete_session(self, session_id: str) -> None:
        """Delete a session (thread): its checkpoints, writes, events and children records.

        Ordered by op time: only rows written before this call go, and any op made before
        it and applied later (a journal replayed late) is skipped, so nothing deleted comes
        back and nothing newer is destroyed. Deleting an unknown session changes nothing.
        """
        self._write(DeleteSession(session_id=session_id))

    def prune_checkpoints(
        self, session_id: str, keep: int, *, namespace: str | None = None
    ) -> None:
        """Keep only the ``keep`` newest checkpoints per namespace (0: delete them all).

        Their writes go with them. Ordered by op time as :meth:`delete_session`.

        Raises:
            ValueError: ``keep`` < 0.
        """
        self._write(PruneCheckpoints(session_id=session_id, keep=keep, namespace=namespace))

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint made by these runs, with its writes, in every session.

        Ordered by op time as :meth:`delete_session`.

        Raises:
            ValueError: no run id, or a bad one.
        """
        self._write(DeleteRuns(run_ids=list(run_ids)))

    def pop_checkpoint(self, session_id: str, *, namespace: str = "") -> Checkpoint | None:
        """Delete and return the newest checkpoint of a namespace (by checkpoint id).

        Race-free: concurrent pops (any process) each get a different checkpoint.

        Returns:
            The popped checkpoint (its id, session, namespace and data), or None when there
            was none, and also when the store is closing or closed: the pop is then queued or
            journaled and takes effect, ordered by its time, when applied.
        """
        op = PopCheckpoint(session_id=session_id, namespace=namespace)
        result = self._write(op)
        if not isinstance(result, tuple):
            return None
        checkpoint_id, name, data = result
        return Checkpoint(
            id=checkpoint_id,
            session_id=session_id,
            name=name,
            data=json.loads(data),
            created_at=op.ts,
            namespace=namespace,
        )

    def copy_session(self, source_id: str, target_id: str) -> None:
        """Copy every checkpoint (and its writes) of one session into another, existing one.

        The target keeps the rows it already has. Ordered by op time as
        :meth:`delete_session`: rows written after this call are not copied by a late replay.

        Raises:
            SessionNotFoundError: no target session (checked while the store is open).
        """
        self._write(CopySession(source_id=source_id, target_id=target_id))

    # ----------------------------------------------------------------------------- events

    def log_event(
        self, session_id: str, message: str, level: EventLevel = "info", data: Any = None
    ) -> Event:
        """Append an event to the session's log.

        Returns:
            The event; its ``id`` is None when the store was closing or closed (the op was
            queued or journaled and gets its id when applied).

        Raises:
            ValueError: bad level, message too long, data not JSON-serialisable.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = LogEvent(session_id=session_id, message=message, level=level, data=data)
        result = self._write(op)
        # The model is built after COMMIT: nothing but SQL runs while the write lock is held.
        return event_from_op(op, result if isinstance(result, int) else None)

    def events(self, session_id: str, after_id: int | None = None, limit: int = 100) -> list[Event]:
        """Return up to ``limit`` events with id > ``after_id``, oldest first (for paging).

        Raises:
            ValueError: ``limit`` outside 1..10000.
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        if not 1 <= limit <= _MAX_EVENTS_PAGE:
            raise ValueError(f"limit must be within 1..{_MAX_EVENTS_PAGE}")
        rows = self._read(
            "events",
            f"SELECT {EVENT_COLUMNS} FROM events WHERE session_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (session_id, after_id or 0, limit),
        )
        if not rows and after_id is None:
            self.get_session(session_id)
        return [event_from_row(r) for r in rows]

    # ----------------------------------------------------------------------------- children

    def add_child(
        self,
        session_id: str,
        pid: int,
        *,
        identity: ProcessIdentity | None = None,
        pgid: int | None = None,
        argv: list[str] | None = None,
    ) -> ChildProcess:
        """Record a child process of the session; its identity is captured now.

        Args:
            session_id: the session.
            pid: the child's pid.
            identity: an identity captured earlier (e.g. right after spawn); must match ``pid``.
            pgid: the child's process group; read from the process when omitted.
            argv: the child's command line; read from the process when omitted.

        Raises:
            ValueError: pid not an int in 2..pid_max, our own pid, or ``identity.pid`` differs.
            ProcessNotFoundError: no process has that pid (nothing to identify); also a
                ``ProcessLookupError``.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError(f"pid must be an int, not {type(pid).__name__}")
        check_signal_target(pid)
        if identity is not None and identity.pid != pid:
            raise ValueError(f"identity is for pid {identity.pid}, not {pid}")
        if identity is None or pgid is None or argv is None:
            info = read_process_info(pid)
            if info is None:
                raise ProcessNotFoundError(pid)
            if identity is None:
                identity = ProcessIdentity.capture(pid)
            pgid = info.pgid if pgid is None else pgid
            argv = info.argv if argv is None else argv
        op = AddChild(
            session_id=session_id,
            pid=pid,
            start_ticks=identity.start_ticks,
            boot_id=identity.boot_id,
            pgid=pgid,
            argv=argv,
        )
        self._write(op)
        return child_from_op(op)

    def remove_child(
        self,
        session_id: str,
        pid: int,
        exit_code: int | None = None,
        *,
        state: ChildState | str = ChildState.EXITED,
        start_ticks: int | None = None,
    ) -> None:
        """Record that a child ended (``state`` says how). Idempotent; the row is kept.

        Raises:
            ValueError: bad pid or state.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        self._write(
            RemoveChild(
                session_id=session_id,
                pid=pid,
                exit_code=exit_code,
                state=ChildState(state),
                start_ticks=start_ticks,
            )
        )

    def children(self, session_id: str, include_exited: bool = False) -> list[ChildProcess]:
        """Return the session's recorded children, oldest first.

        Args:
            session_id: the session.
            include_exited: also the ones that ended (by default only running/unkillable).

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        where = "" if include_exited else " AND state IN ('running', 'unkillable')"
        rows = self._read(
            "children",
            f"SELECT {CHILD_COLUMNS} FROM child_processes WHERE session_id = ?{where} "
            "ORDER BY registered_at, pid",
            (session_id,),
        )
        if not rows:
            self.get_session(session_id)
        return [child_from_row(r) for r in rows]

    def all_children(self, include_exited: bool = False) -> list[ChildProcess]:
        """Return every session's recorded children, oldest first.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        where = "" if include_exited else " WHERE state IN ('running', 'unkillable')"
        rows = self._read(
            "all_children",
            f"SELECT {CHILD_COLUMNS} FROM child_processes{where} ORDER BY registered_at, pid",
        )
        return [child_from_row(r) for r in rows]

    # ----------------------------------------------------------------------------- maintenance

    def replay(self) -> ReplayReport:
        """Apply the journal beside the database now (any process's closed-store ops).

        Returns:
            What was applied, rejected (kept aside), invalid or torn.

        Raises:
            StoreClosedError: the store is closed.
            StoreReadOnlyError: the store was opened read-only.
            StoreBusyError: locked past the retry deadline; the journal is left as it was.
        """
        if self.read_only:
            raise StoreReadOnlyError(self.path, "replay")
        if self._gate.state is StoreState.CLOSED:
            raise StoreClosedError(self.path)
        report = self._journal.replay(self._writer.apply_batch)
        with self._counter_lock:
            self._n_replayed += report.applied
        if report.applied or report.rejected or report.invalid or report.torn:
            log.info("replayed journal of %s: %s", self.path, report)
        return report

    def checkpoint(self, mode: str = "TRUNCATE") -> CheckpointResult:
        """Checkpoint the WAL now on the writer connection, between write transactions.

        Args:
            mode: ``"TRUNCATE"`` (default; the WAL file goes to 0 bytes when no reader pins it)
                or ``"PASSIVE"``.

        Returns:
            The result; ``ok`` False when busy (try later). Never raises for BUSY.

        Raises:
            StoreClosedError: the store is closing or closed.
            StoreReadOnlyError: the store was opened read-only.
            StoreIOError: the disk failed (I/O error, no room); the database is as before the
                call or checkpointed in part, which SQLite makes safe either way.
            StoreCorruptError: SQLite found the file corrupt.
            ValueError: unknown mode.
        """
        if mode not in ("TRUNCATE", "PASSIVE"):
            raise ValueError("mode must be 'TRUNCATE' or 'PASSIVE'")
        if self.read_only:
            raise StoreReadOnlyError(self.path, "checkpoint")
        lease = self._gate.acquire("checkpoint")
        if lease is None:
            raise StoreClosedError(self.path)
        try:
            result = self._writer.checkpoint(mode)
        except apsw.Error as err:
            raise translate_open_error(self.path, err, "checkpoint") from err
        finally:
            self._gate.release(lease)
        assert result is not None  # no lock timeout: only None when one is given
        return result

    def _scheduled_checkpoint(self) -> CheckpointResult | None:
        # The timer thread's callback: None (the thread ends) once the store is closing.
        lease = self._gate.acquire("checkpointer")
        if lease is None:
            return None
        try:
            return self._writer.checkpoint("TRUNCATE")
        finally:
            self._gate.release(lease)

    def apply_ops(self, ops: Sequence[Op]) -> list[Exception | None]:
        """Apply ops made elsewhere (an import, a journal kept aside) in order, idempotently.

        Each op runs in its own savepoint inside transactions of up to 1,000 ops, so one bad op
        is rejected without undoing the others.

        Returns:
            Per op, None when applied (or already applied before), else the error rejecting it.

        Raises:
            StoreClosedError: the store is closing or closed.
            StoreReadOnlyError: the store was opened read-only.
            StoreBusyError: locked past the retry deadline; the failing batch was not applied.
        """
        if self.read_only:
            raise StoreReadOnlyError(self.path, "apply_ops")
        lease = self._gate.acquire("apply_ops")
        if lease is None:
            raise StoreClosedError(self.path)
        try:
            results = self._writer.apply_batch(ops)
        finally:
            self._gate.release(lease)
        with self._counter_lock:
            self._n_applied += sum(r is None for r in results)
        return results

    def journal_pending(self) -> int:
        """Move every queued op to the durable journal now (for a hard exit mid-close).

        Returns:
            How many ops were journaled. Safe from any thread; never raises for a closed store.

        Raises:
            JournalFullError, StoreOpenError, StoreIOError: the journal could not take them;
                each op's JSON was logged at error level first.
        """
        ops = self._gate.drain_pending()
        if ops:
            try:
                self._journal_ops(ops, "hard exit while closing")
            except Exception:
                raise  # _journal_ops logged each op's JSON at error level
            except BaseException as err:
                # Interrupted inside the append: the process is about to exit, and the log is
                # the last place these ops can go.
                self._unrecorded(ops, f"hard exit while closing: {type(err).__name__}")
                raise
        return len(ops)

    @property
    def state(self) -> StoreState:
        """OPEN, CLOSING or CLOSED."""
        return self._gate.state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has finished (also while it runs: no new reads)."""
        return self._gate.state is not StoreState.OPEN

    @property
    def journal_path(self) -> str:
        """The durable journal file beside the database."""
        return self._journal.path

    def stats(self) -> StoreStats:
        """A snapshot of the store's counters (works in every state)."""
        state, leases, pending = self._gate.counts()
        try:
            wal = os.stat(self._wal_path).st_size
        except FileNotFoundError:
            wal = 0
        with self._counter_lock:
            return StoreStats(
                path=self.path,
                state=state,
                leases=leases,
                pending=pending,
                applied=self._n_applied,
                applied_from_queue=self._n_from_queue,
                replayed=self._n_replayed,
                journaled=self._n_journaled,
                journal_bytes=self._journal.size(),
                wal_bytes=wal,
                checkpoints=self._writer.checkpoints,
                last_checkpoint=self._writer.last_checkpoint,
                failures=list(self._failures),
            )

    def __repr__(self) -> str:
        state, leases, pending = self._gate.counts()
        return (
            f"<SessionStore path={self.path!r} state={state.name} leases={leases} "
            f"pending={pending}>"
        )

    # ----------------------------------------------------------------------------- closing

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> CloseReport:
        """Close the store: drain, apply what was queued, checkpoint, close every connection.

        Sequence: the store turns CLOSING (no new leases; writes queue up); in-flight leases
        get up to ``timeout`` (default ``config.close_timeout_s``) to finish, after which they
        are abandoned and their connections interrupted; queued writes are applied in arrival
        order; the journal is replayed if anything is in it; a TRUNCATE checkpoint runs; every
        connection is closed. Writes arriving from then on are journaled.

        Guarantees: idempotent (a second call returns at once with ``already_closed``; a call
        racing the first waits for it); every connection is released even when an error is
        reported, so an error here means "grace was lost", never "a resource leaked"; no
        acknowledged write is lost: each was applied, kept aside with its reason (the database
        refused it), or is in the fsynced journal. The drain never raises: an op that even the
        journal cannot take (disk full, journal at its bound) is in ``CloseReport.unrecorded``
        as JSON and in the log at error level.
        Not guaranteed: ops queued in memory are lost if the process is SIGKILLed before
        close applies or journals them.

        Returns:
            What happened, with durations; the store is CLOSED whatever it says.

        Raises:
            BaseException: only an interrupt (KeyboardInterrupt, SystemExit) raised during the
                close, after queued ops were secured as above and every connection closed; the
                store is CLOSED and a second call returns the report of this one.
        """
        with self._close_lock:
            if self._close_report is not None:
                return self._close_report.model_copy(update={"already_closed": True})
            # begin_close inside the try: an interrupt right after it must not leave CLOSING.
            try:
                if not self._gate.begin_close():
                    return CloseReport(path=self.path, already_closed=True)
                report = self._do_close(self.config.close_timeout_s if timeout is None else timeout)
            except BaseException as err:
                # Whatever broke the close (an interrupt), the store ends CLOSED with its
                # connections closed, and a second close() returns this report.
                self._close_report = self._close_after_failure(err)
                _live.discard(self)
                raise
            self._close_report = report
            _live.discard(self)
            return report

    def _close_after_failure(self, err: BaseException) -> CloseReport:
        out = _DrainOutcome([f"close failed: {type(err).__name__}: {err}"])
        self._secure(self._gate.close_and_take_all(), "close failed", out)
        self._writer.stop_checkpointer(timeout=0.1)
        self._close_connections(out.errors)
        return CloseReport(path=self.path, errors=out.errors, unrecorded=out.unrecorded)

    def _do_close(self, timeout: float) -> CloseReport:
        # One deadline for the whole close: every phase gets what is left of ``timeout``, and
        # the phases after the lease drain get at least CLOSE_GRACE_S between them (see
        # CLOSE_GRACE_S for the bound this gives).
        errors: list[str] = []
        t0 = time.monotonic()
        end = t0 + timeout

        def left() -> float:
            return max(0.0, end - time.monotonic())

        self._writer.stop_checkpointer(timeout=min(left(), 0.1))
        abandoned = self._gate.wait_drained(left())
        if abandoned:
            # Their connections may be mid-statement or waiting on a lock: make them give up.
            self._writer.abort_waits = True
            self._writer.interrupt()
            for conn in self._readers.all():
                with contextlib.suppress(apsw.Error):
                    conn.interrupt()
            errors.append(f"{len(abandoned)} lease(s) abandoned after {timeout:.2f} s")
            # Once an abandoned writer has let go (its op journaled), waits may wait again:
            # the queue is better applied now than journaled for the next open.
            if self._writer.lock.acquire(timeout=_LET_GO_S):
                self._writer.abort_waits = False
                self._writer.lock.release()
        t1 = time.monotonic()

        # Queue and replay share what is left, and at least CLOSE_GRACE_S (on the store's
        # clock: the writer's deadlines are on it).
        deadline = self._clock() + max(left(), CLOSE_GRACE_S)
        out = _DrainOutcome(errors)
        self._drain_queue(deadline, out)
        applied_from_queue = out.applied
        with self._counter_lock:
            self._n_from_queue += applied_from_queue
        t2 = time.monotonic()

        replayed = 0
        if self._journal.size() and self._writer.is_open and self._clock() < deadline:
            # Bounded by the same deadline; what is not replayed in time stays in the journal
            # for the next open (op ids make a partly applied replay harmless to redo).
            try:
                rep = self._journal.replay(
                    functools.partial(self._writer.apply_batch, deadline=deadline)
                )
                replayed = rep.applied
                with self._counter_lock:
                    self._n_replayed += rep.applied
            except Exception as err:  # the journal stays for the next open
                errors.append(f"journal replay at close: {type(err).__name__}: {err}")
        t3 = time.monotonic()

        wal_before = self._wal_size()
        checkpoint = None
        if self._writer.is_open:
            try:
                # Busy here is normal when other processes still use the database (the last
                # one to close empties the WAL); it is reported in `checkpoint`, and is not an
                # error of this close.
                checkpoint = self._writer.checkpoint("TRUNCATE", lock_timeout=_LET_GO_S)
            except Exception as err:  # close never raises for it; reported
                errors.append(f"final checkpoint: {err}")
        t4 = time.monotonic()
        self._close_connections(errors)
        t5 = time.monotonic()
        return CloseReport(
            path=self.path,
            drain_s=t1 - t0,
            queue_s=t2 - t1,
            replay_s=t3 - t2,
            checkpoint_s=t4 - t3,
            close_s=t5 - t4,
            total_s=t5 - t0,
            applied_from_queue=applied_from_queue,
            journaled=self._n_journaled,
            replayed=replayed,
            abandoned_leases=[lease.describe() for lease in abandoned],
            wal_bytes_before=wal_before,
            wal_bytes_after=self._wal_size(),
            checkpoint=checkpoint,
            errors=errors,
            rejected=out.rejected,
            unrecorded=out.unrecorded,
        )

    def _drain_batch(self, ops: list[Op], out: _DrainOutcome, deadline: float) -> None:
        """Apply queued ops; each ends applied, kept aside, journaled or reported. Never raises."""
        if not self._writer.is_open:
            self._secure(ops, "no connection to apply queued ops", out)
            return
        try:
            results = apply_isolated(
                lambda batch: self._writer.apply_batch(batch, deadline=deadline), ops
            )
        except TimeoutError:
            self._secure(ops, "writer held by an abandoned lease", out)
            return
        except Exception as err:  # ENVIRONMENT_ERRORS: the database cannot take them now
            out.errors.append(f"queued ops not applied: {type(err).__name__}: {err}")
            # Some may have committed before the error; journaling them again is harmless.
            self._secure(ops, f"could not apply queued ops at close: {err}", out)
            return
        rejected = [(op, err) for op, err in zip(ops, results, strict=True) if err is not None]
        out.applied += len(ops) - len(rejected)
        out.rejected += len(rejected)
        if rejected:
            try:
                self._record_rejected(rejected)
            except Exception as err:  # the rejected file failed: the journal keeps them
                out.errors.append(f"rejected file: {type(err).__name__}: {err}")
                self._secure([op for op, _ in rejected], "rejected at close", out)

    def _drain_queue(self, deadline: float, out: _DrainOutcome) -> None:
        """Apply the pending queue in batches and move the store to CLOSED.

        Never raises ``Exception``: every op taken off the queue ends applied, kept aside,
        journaled or in ``out.unrecorded``. A ``BaseException`` (KeyboardInterrupt) secures
        them the same way, then propagates, with the store CLOSED.
        """
        in_hand: list[Op] = []
        # Bounded: a thread that keeps writing refills the queue faster than batches apply
        # (an append costs a microsecond, an applied op tens), so draining "until empty" could
        # run forever. Past the deadline the rest goes to the journal and the store closes.
        try:
            while True:
                if self._clock() >= deadline:
                    in_hand = self._gate.close_and_take_all()
                    if in_hand:
                        out.errors.append(
                            f"{len(in_hand)} queued op(s) journaled at the drain deadline"
                        )
                        self._secure(
                            in_hand, "close: queue still refilling at the drain deadline", out
                        )
                    return
                in_hand = self._gate.take_pending_or_close(BATCH)
                if not in_hand:
                    return  # CLOSED: later writes are journaled
                self._drain_batch(in_hand, out, deadline)
                in_hand = []
        except BaseException as err:
            # _drain_batch does not raise Exception; this is an interrupt (or a bug): nothing
            # taken off the queue may vanish with it. Ops in hand are kept in `in_hand` until
            # they are applied or recorded, so journaling them again here is at worst a
            # duplicate, which replay makes harmless.
            out.errors.append(f"drain interrupted: {type(err).__name__}: {err}")
            self._secure(in_hand + self._gate.close_and_take_all(), "close interrupted", out)
            if not isinstance(err, Exception):
                raise

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return 0

    def _close_connections(self, errors: list[str]) -> None:
        if self._pid != os.getpid():
            return  # inherited across fork: never closed here
        for conn in self._readers.take_all():
            with FORK_GATE.section():
                try:
                    conn.close()
                except apsw.Error as err:
                    errors.append(f"close: {type(err).__name__}: {err}")
                    with contextlib.suppress(apsw.Error):
                        conn.close(True)
        errors.extend(self._writer.close())

    # ----------------------------------------------------------------------------- fork

    def _after_fork_in_child(self) -> None:
        # The parent's connections are not ours: keep them referenced (never closed, never
        # freed) and open our own lazily on first use. Locks may have been held by threads that
        # do not exist here, so they are replaced, never taken; queued ops belong to the parent.
        _inherited_at_fork.extend(self._readers.forget_after_fork())
        inherited = self._writer.forget_after_fork()
        if inherited is not None:
            _inherited_at_fork.append(inherited)
        state = self._gate.state
        self._init_locks()
        if state is not StoreState.OPEN:
            self._gate.force_closed()
        self._pid = os.getpid()

    # ----------------------------------------------------------------------------- maintenance
    # (store-level operations live in _maintenance; these delegate, see there for the rules)

    def prune_sessions(self, before: float, *, deadline_s: float | None = None) -> PruneReport:
        """Delete sessions ended before ``before``; see :func:`._maintenance.prune_sessions`."""
        from ._maintenance import prune_sessions

        return prune_sessions(self, before, deadline_s=deadline_s)

    def find_checkpoints_lenient(
        self,
        session_id: str,
        *,
        namespace: str | None = None,
        limit: int | None = None,
        check: Callable[[Checkpoint], str | None] | None = None,
    ) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
        """:meth:`find_checkpoints`, skipping corrupt rows; see ``_maintenance.find_readable``."""
        from ._maintenance import find_readable

        return find_readable(self, session_id, namespace=namespace, limit=limit, check=check)

    def resume_session_with_owner(self, session_id: str, *, claim: bool) -> None:
        """Resume and record the new owner (this process, or none); see ``_maintenance``."""
        from ._maintenance import resume_with_owner

        resume_with_owner(self, session_id, claim=claim)

    def vacuum(self) -> VacuumReport:
        """Rebuild the file compactly; see :func:`sessionstore._maintenance.vacuum`."""
        from ._maintenance import vacuum

        return vacuum(self)

    def backup(self, dest: str, *, force: bool = False) -> BackupReport:
        """Copy the database to ``dest`` online; see :func:`sessionstore._maintenance.backup`."""
        from ._maintenance import backup

        return backup(self, dest, force=force)


class _DrainOutcome:
    """What draining the queue at close did, filled in as it goes."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.applied = 0
        self.rejected = 0
        self.unrecorded: list[str] = []


def _after_fork_in_child() -> None:
    for store in list(_live):
        store._after_fork_in_child()


def _close_at_exit() -> None:
    for store in live_stores():
        if not store.config.close_at_exit or store._pid != os.getpid():
            continue
        log.warning("closing %r left open at interpreter exit", store)
        with contextlib.suppress(Exception):
            store.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
