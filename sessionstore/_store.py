"""SessionStore: the typed facade's core; each job behind it has a module of its own.

This module keeps the core: construction and ``open``, ``_write``, the read runners and
leases, state and stats, ``close``. The public methods are grouped by topic in mixins that
``SessionStore`` inherits (``_store_sessions``, ``_store_checkpoints``, ``_store_children``,
``_store_maintenance``); ``_store_base`` declares what they use of this core.

A write method builds an op (``_ops``, ``_transaction``) and hands it to the router
(``_routing``: apply now, queue while closing, journal after close, keep aside); reads lease
a connection from the gate (``_leases``) and the pool (``_readers``); ``open`` runs the checks
of ``_opening``, ``close`` the sequence of ``_close``; process-wide hooks live in
``_lifecycle``, side-file names in ``_files``, the one write connection in ``_writer``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from . import _exports
from . import _lifecycle as lifecycle
from . import _queries as q
from ._close import CloseSequence, close_connections
from ._config import StoreConfig
from ._connection import (
    RetryPolicy,
    open_connection,
    open_read_only,
    read_only_mode,
    translate_open_error,
)
from ._files import wal_size
from ._forkgate import FORK_GATE
from ._fscheck import warn_if_risky
from ._group import make_writer
from ._journal import Journal
from ._leases import Gate, Lease
from ._migrate import FileKind, identify
from ._models import CloseReport, Event, EventLevel, ReplayReport, Session, StoreState, StoreStats
from ._opening import check_read_only_kind, check_read_only_version, prepare_schema, replay_at_open
from ._ops import (
    SESSION_ID_CHARS,
    Heartbeat,
    LogEvent,
    Op,
    apply_heartbeat,
    event_from_op,
    heartbeat_op,
    session_from_create,
)
from ._readers import ReaderPool
from ._routing import GONE_ERRORS, WriteRouter
from ._store_checkpoints import CheckpointMethods
from ._store_children import EventChildMethods
from ._store_maintenance import MaintenanceMethods
from ._store_sessions import SessionMethods
from ._transaction import make_create
from .errors import StoreClosedError, StoreCorruptError

__all__ = ["ReadLease", "SessionStore", "live_stores"]

log = logging.getLogger("sessionstore")

T = TypeVar("T")


def _gated(fn: Callable[[apsw.Connection], T], conn: apsw.Connection) -> T:
    with FORK_GATE.section():  # no fork while this thread is inside SQLite (see _forkgate)
        return fn(conn)


# Passed by the library's own constructors: a direct ``SessionStore(...)`` or ``ReadLease(...)``
# raises TypeError naming the right way (trio's NoPublicConstructor, without a metaclass).
_BUILD = object()


def live_stores() -> list[SessionStore]:
    """Stores in this process that are not closed (tests use it to catch leaks)."""
    return [s for s in lifecycle.live() if isinstance(s, SessionStore)]


class ReadLease:
    """A lease on a read connection for ad-hoc queries (``with store.lease() as lease``).

    After the store closed (or abandoned this lease at its close deadline) every use raises
    :class:`StoreClosedError`, never a crash or a hang.
    """

    def __init__(self, store: SessionStore, lease: Lease, *, _token: object = None) -> None:
        if _token is not _BUILD:
            raise TypeError("ReadLease is not built by hand; use `with store.lease() as lease`")
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


class SessionStore(SessionMethods, CheckpointMethods, EventChildMethods, MaintenanceMethods):
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
        _token: object = None,
    ) -> None:
        """Use :meth:`SessionStore.open`; this only sets up state, it opens nothing.

        Raises:
            TypeError: called directly rather than through :meth:`SessionStore.open`.
        """
        if _token is not _BUILD:
            raise TypeError("SessionStore is not built by hand; use SessionStore.open(path)")
        self.path = path
        self.config = config
        self.read_only = read_only
        # Why a read-only store reads an immutable snapshot (None: a live, locked view).
        self.snapshot: str | None = None
        if read_only:
            self.snapshot = read_only_mode(
                path, config.busy_timeout_ms / 1000, probe_locks=not lifecycle.open_read_write(path)
            )
        self._clock = clock
        self._policy = RetryPolicy(config.write_deadline_s, clock=clock)
        self._journal = Journal(path, max_bytes=config.max_journal_bytes)
        self._pid = os.getpid()
        self._init_locks()
        self._writer = make_writer(path, config, self._policy, clock)
        self._readers = ReaderPool(
            lambda: open_connection(self.path, self.config, self._policy, query_only=True),
            config.read_connections,
        )
        self._router = WriteRouter(
            path, self._gate, self._writer, self._journal, read_only=read_only
        )
        self._close_report: CloseReport | None = None
        self.open_replay: ReplayReport = ReplayReport()
        # What the integrity probe at open found: "ok", or why it was skipped.
        self.integrity_probe = "not run"

    def _init_locks(self) -> None:
        self._gate: Gate[Op] = Gate(self.config.max_pending_ops)
        self._close_lock = threading.Lock()

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
        store = cls(
            os.path.realpath(path_str), config, clock=clock, read_only=read_only, _token=_BUILD
        )
        # Before anything writes:
        kind = identify(store.path, busy_timeout_ms=config.busy_timeout_ms)
        if read_only:
            store._open_read_only(kind)
            return store
        warn_if_risky(store.path)
        store._open()
        return store

    def _open_read_only(self, kind: FileKind) -> None:
        check_read_only_kind(self.path, kind)  # before the store is live
        lifecycle.track(self)
        try:
            version = self._run_read(q.schema_version, "open")
            check_read_only_version(self.path, int(version))
        except BaseException:
            self._abort_open()
            raise

    def _open(self) -> None:
        # A failed open leaves nothing behind: no live store, no checkpointer thread, no
        # connection. Replay failures do not fail it (see _opening.replay_at_open).
        lifecycle.track(self)
        try:
            self._journal.check()  # before anything is touched: a planted link is refused
            try:
                self.integrity_probe = self._writer.with_connection(
                    lambda conn: prepare_schema(conn, self.path, self._policy)
                )
            except apsw.Error as err:
                raise translate_open_error(self.path, err) from err
            if self.config.checkpointing:
                self._writer.start_checkpointer(self._scheduled_checkpoint)
            if self.config.replay_on_open:
                self.open_replay = replay_at_open(self.path, self.replay)
        except BaseException:
            self._abort_open()
            raise

    def _abort_open(self) -> None:
        self._gate.force_closed()
        self._writer.stop_checkpointer(timeout=5.0)
        errors: list[str] = []
        close_connections(self._readers, self._writer, self._pid, errors)
        lifecycle.forget(self)
        for error in errors:
            log.warning("closing %s after a failed open: %s", self.path, error)

    # ----------------------------------------------------------------------------- writing

    def _write(self, op: Op) -> Any:
        """Route ``op`` (see ``_routing``): what ``apply`` returned, or ``DEFERRED``."""
        return self._router.write(op)

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
        except GONE_ERRORS as err:
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
        self.snapshot = read_only_mode(
            self.path,
            self.config.busy_timeout_ms / 1000,
            probe_locks=not lifecycle.open_read_write(self.path),
        )
        conn = open_read_only(self.path, self.config, snapshot=self.snapshot is not None)
        try:
            return self._policy.call(lambda: _gated(fn, conn), path=self.path, operation=borrower)
        finally:
            conn.close()

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
            yield ReadLease(self, lease, _token=_BUILD)
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
        op = make_create(name, objective, metadata)
        self._write(op)
        return session_from_create(op)

    def heartbeat(self, session_id: str) -> None:
        """Record that the session's owner is alive now.

        Raises:
            SessionNotFoundError: no such session (checked while the store is open).
        """
        # heartbeat_plain(session_id), written out: a call less on the hottest write.
        if not (
            type(session_id) is str
            and 0 < len(session_id) <= SESSION_ID_CHARS
            and session_id.isascii()
        ):
            # A wrong type, a bound crossed, a non-ASCII id: the op's own constructor checks it
            # (the same error in every state) and a valid one is routed as an op.
            self._router.write(Heartbeat.make(session_id))
            return
        # Applied without an op while the store is open: see WriteRouter.write_call.
        call = (session_id, time.time())
        self._router.write_call("heartbeat", apply_heartbeat, call, heartbeat_op)

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
        op = LogEvent.make(session_id, message, level, data)
        result = self._router.write(op)
        # The model is built after COMMIT: nothing but SQL runs while the write lock is held.
        return event_from_op(op, result if isinstance(result, int) else None)

    # ----------------------------------------------------------------------------- state

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
        counters = self._router.counters()
        return StoreStats(
            path=self.path,
            state=state,
            leases=leases,
            pending=pending,
            applied=counters.applied,
            applied_from_queue=counters.from_queue,
            replayed=counters.replayed,
            journaled=counters.journaled,
            journal_bytes=self._journal.size(),
            wal_bytes=wal_size(self.path),
            checkpoints=self._writer.checkpoints,
            last_checkpoint=self._writer.last_checkpoint,
            failures=counters.failures,
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
                report = self._closing().run(
                    self.config.close_timeout_s if timeout is None else timeout
                )
            except BaseException as err:
                # Whatever broke the close (an interrupt), the store ends CLOSED with its
                # connections closed, and a second close() returns this report.
                self._close_report = self._closing().after_failure(err)
                lifecycle.forget(self)
                raise
            self._close_report = report
            lifecycle.forget(self)
            return report

    def _closing(self) -> CloseSequence:
        return CloseSequence(
            path=self.path,
            clock=self._clock,
            gate=self._gate,
            writer=self._writer,
            readers=self._readers,
            journal=self._journal,
            router=self._router,
            pid=self._pid,
        )

    # ----------------------------------------------------------------------------- fork

    def _after_fork_in_child(self) -> None:
        # The parent's connections are not ours: keep them referenced (never closed, never
        # freed) and open our own lazily on first use. Locks may have been held by threads that
        # do not exist here, so they are replaced, never taken; queued ops belong to the parent.
        lifecycle.keep_inherited([*self._readers.forget_after_fork()])
        inherited = self._writer.forget_after_fork()
        if inherited is not None:
            lifecycle.keep_inherited([inherited])
        state = self._gate.state
        self._init_locks()
        self._router.after_fork(self._gate)
        if state is not StoreState.OPEN:
            self._gate.force_closed()
        self._pid = os.getpid()


lifecycle.install_store_hooks()  # after the hooks of the modules imported above

_exports.publish_written_here(__name__)  # last: see _exports
