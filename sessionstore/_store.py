"""SessionStore: the typed facade; each job behind it has a module of its own.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

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
from ._identity import ProcessIdentity
from ._journal import Journal
from ._leases import Gate, Lease
from ._migrate import FileKind, identify
from ._models import (
    Checkpoint,
    CheckpointResult,
    CheckpointWrite,
    ChildProcess,
    ChildState,
    CloseReport,
    Event,
    EventLevel,
    ReplayReport,
    Session,
    SessionStatus,
    StoreState,
    StoreStats,
)
from ._opening import (
    check_read_only_kind,
    check_read_only_version,
    prepare_schema,
    replay_at_open,
)
from ._ops import (
    CopySession,
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
    session_from_create,
    session_id_for_key,
)
from ._queries import MAX_PAGE, metadata_filter
from ._readers import ReaderPool
from ._routing import GONE_ERRORS, WriteRouter
from ._transaction import (
    Transaction,
    checkpoint_from_pop,
    checkpoint_from_put,
    make_add_child,
    make_create,
    make_keyed_create,
    make_put_checkpoint,
    make_put_writes,
)
from ._writer import Writer
from .errors import (
    SessionNotFoundError,
    StoreClosedError,
    StoreCorruptError,
    StoreReadOnlyError,
)

__all__ = ["ReadLease", "SessionStore", "live_stores"]

log = logging.getLogger("sessionstore")

if TYPE_CHECKING:
    from ._maintenance import BackupReport, PruneReport, VacuumReport

T = TypeVar("T")

_MAX_EVENTS_PAGE = 10_000


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
            own = any(s.path == path and not s.read_only for s in live_stores())
            self.snapshot = read_only_mode(path, config.busy_timeout_ms / 1000, probe_locks=not own)
        self._clock = clock
        self._policy = RetryPolicy(config.write_deadline_s, clock=clock)
        self._journal = Journal(path, max_bytes=config.max_journal_bytes)
        self._pid = os.getpid()
        self._init_locks()
        self._writer = Writer(path, config, self._policy, clock)
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

    def get_session(self, session_id: str) -> Session:
        """Return one session.

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        found = self._run_read(lambda conn: q.get_session(conn, session_id), "get_session")
        if found is None:
            raise SessionNotFoundError(session_id)
        return found

    def list_sessions(self, status: SessionStatus | str | None = None) -> list[Session]:
        """Return sessions, oldest first, optionally only those with ``status``.

        Raises:
            ValueError: unknown status.
            StoreClosedError: the store is closing or closed.
        """
        wanted = None if status is None else SessionStatus(status)
        return self._run_read(lambda conn: q.list_sessions(conn, wanted), "list_sessions")

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
        self._router.write(Heartbeat.make(session_id))

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
        found = self._run_read(
            lambda conn: q.list_checkpoints(
                conn, session_id, name=name, limit=limit, newest_first=newest_first
            ),
            "list_checkpoints",
        )
        if not found:
            self.get_session(session_id)  # SessionNotFoundError for an unknown id
        return found

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
            lambda conn: q.find_checkpoints(
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
            lambda conn: q.checkpoint_writes(conn, session_id, namespace, checkpoint_id),
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
        return checkpoint_from_pop(op, self._write(op))

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
        op = LogEvent.make(session_id, message, level, data)
        result = self._router.write(op)
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
        found = self._run_read(lambda conn: q.events(conn, session_id, after_id, limit), "events")
        if not found and after_id is None:
            self.get_session(session_id)
        return found

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
        op = make_add_child(session_id, pid, identity=identity, pgid=pgid, argv=argv)
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
        found = self._run_read(
            lambda conn: q.children(conn, session_id, include_exited=include_exited), "children"
        )
        if not found:
            self.get_session(session_id)
        return found

    def all_children(self, include_exited: bool = False) -> list[ChildProcess]:
        """Return every session's recorded children, oldest first.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        return self._run_read(
            lambda conn: q.all_children(conn, include_exited=include_exited), "all_children"
        )

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
        self._router.count(replayed=report.applied)
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
        self._router.count(applied=sum(r is None for r in results))
        return results

    def journal_pending(self) -> int:
        """Move every queued op to the durable journal now (for a hard exit mid-close).

        Returns:
            How many ops were journaled. Safe from any thread; never raises for a closed store.

        Raises:
            JournalFullError, StoreOpenError, StoreIOError: the journal could not take them;
                each op's JSON was logged at error level first.
        """
        return self._router.journal_pending()

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


lifecycle.install_store_hooks()  # after the hooks of the modules imported above
