"""The exceptions sessionstore raises, all rooted in :class:`SessionStoreError`.

Bad arguments are not here: they raise :class:`ValueError` or :class:`TypeError` (pydantic's
``ValidationError`` is a ``ValueError``) before anything touches the database. Errors that wrap an
apsw or OS error chain it (``raise ... from err``), so the original code is on ``__cause__``.
"""

from __future__ import annotations

import errno
from typing import Any

from . import _exports

__all__ = [
    "ChildTerminationError",
    "ForeignDatabaseError",
    "InvalidTransitionError",
    "JournalBusyError",
    "JournalFullError",
    "ProcessNotFoundError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "SessionStoreError",
    "StoreBusyError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreIOError",
    "StoreOpenError",
    "StoreReadOnlyError",
    "UnsafeForkError",
    "UnsafeSignalError",
]


class SessionStoreError(Exception):
    """Root of every error sessionstore raises on purpose.

    Every subclass pickles and unpickles to an equal error (same type, message and fields), so a
    ``multiprocessing`` worker's failure reaches its parent intact. Python's default pickling
    would call ``cls(*self.args)``, that is ``cls(message)``: a TypeError for constructors that
    take several fields, and a doubled message for the rest.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class StoreClosedError(SessionStoreError):
    """A read, or a use of an abandoned lease, on a store that is closing or closed.

    Writes never raise this: after close they are journaled and applied by the next open.
    """

    def __init__(self, path: str, message: str | None = None) -> None:
        self.path = path
        super().__init__(message or f"store {path!r} is closed")


class StoreBusyError(SessionStoreError):
    """The database stayed locked by other processes past the retry deadline."""

    def __init__(self, path: str, operation: str, waited_s: float) -> None:
        self.path = path
        self.operation = operation
        self.waited_s = waited_s
        super().__init__(
            f"{operation} on {path!r}: database still locked after {waited_s:.2f} s of retries"
        )


class StoreCorruptError(SessionStoreError):
    """The file is not a SQLite database, or the database is corrupt.

    The file is never modified, truncated or moved aside when this is raised.
    """

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path!r} is not a usable sessionstore database: {detail}")


class StoreOpenError(SessionStoreError):
    """The database file could not be opened (missing directory, permissions, not a file)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"cannot open {path!r}: {detail}")


class ForeignDatabaseError(StoreOpenError):
    """The file is a SQLite database of another application; it was left byte-identical.

    sessionstore stamps its files with ``PRAGMA application_id``. A file with another id, or
    with tables but no id (other than a file of sessionstore's first release, recognised by its
    exact schema), is never switched to WAL, migrated or otherwise written.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.args = (
            f"{path!r} is a SQLite database but not a sessionstore one: {detail} (left untouched)",
        )


class StoreIOError(SessionStoreError, OSError):
    """The disk failed under SQLite: an I/O error, or no room to grow (``SQLITE_FULL``).

    An ``OSError`` too, so ``except OSError`` keeps working. Writes never raise it: a write that
    cannot land for a storage reason is journaled instead (see the README's table); ``open()``,
    ``checkpoint()`` and reads do.
    """

    def __init__(self, path: str, operation: str, detail: str) -> None:
        super().__init__(f"{operation} on {path!r} failed: {detail}")
        self.path = path
        self.operation = operation
        self.detail = detail


class StoreReadOnlyError(SessionStoreError):
    """A write, checkpoint or replay on a store opened with ``read_only=True``; nothing written.

    A read-only store never writes: not the database, not the journal, not a side file.
    """

    def __init__(self, path: str, operation: str) -> None:
        self.path = path
        self.operation = operation
        super().__init__(f"{operation} on {path!r}: the store was opened read-only")


class SchemaVersionError(SessionStoreError):
    """The database was written by a newer sessionstore than this one; it was left untouched."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"{path!r} has schema version {found}, newer than the {supported} this sessionstore "
            "understands; upgrade sessionstore (the file was not modified)"
        )


class SessionNotFoundError(SessionStoreError, LookupError):
    """No session with that id exists in the store."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"no session with id {session_id!r}")


class InvalidTransitionError(SessionStoreError):
    """A status change the session's current status does not allow (e.g. pause a stopped one)."""

    def __init__(self, session_id: str, current: str, requested: str) -> None:
        self.session_id = session_id
        self.current = current
        self.requested = requested
        super().__init__(f"session {session_id!r} is {current}; cannot make it {requested}")


class JournalBusyError(StoreBusyError):
    """Another writer held the journal's lock past the wait; the op was not recorded.

    The journal's lock is held only for one read or one write and fsync, and the threads of
    one process take their turns in arrival order, so this means the holder is stopped
    (SIGSTOP) or hung, or many appenders queued ahead. The write that raised it was neither
    applied nor journaled; nothing else is affected.
    """

    def __init__(self, path: str, waited_s: float) -> None:
        self.path = path
        self.operation = "journal append"
        self.waited_s = waited_s
        SessionStoreError.__init__(
            self,
            f"{path!r}: the journal's lock stayed held by another writer for {waited_s:.2f} s",
        )


class JournalFullError(SessionStoreError):
    """The durable journal reached ``StoreConfig.max_journal_bytes``; the op was not recorded."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        self.path = path
        self.size = size
        self.limit = limit
        super().__init__(
            f"journal {path!r} holds {size} bytes, at its limit of {limit}; open the store to "
            "replay it (python -m sessionstore replay)"
        )


class UnsafeSignalError(SessionStoreError, ValueError):
    """A request to signal or track a PID that must never be signalled (<= 1, ours, our group)."""

    def __init__(self, pid: int, reason: str) -> None:
        self.pid = pid
        self.reason = reason
        super().__init__(f"refusing pid {pid}: {reason}")


class ProcessNotFoundError(SessionStoreError, ProcessLookupError):
    """No process has that pid (any more): there is nothing to identify or record.

    A ``ProcessLookupError`` too (``errno`` is ``ESRCH``), so ``except ProcessLookupError`` and
    ``except OSError`` keep working.
    """

    def __init__(self, pid: int, detail: str = "no such process") -> None:
        super().__init__(errno.ESRCH, f"no process with pid {pid}: {detail}")
        self.pid = pid
        self.detail = detail


class ChildTerminationError(SessionStoreError):
    """A child process could not be verified gone (for example stuck in uninterruptible sleep).

    Reserved: no operation of this version raises it. Shutdown and ``reap_orphans`` never raise
    for a process that outlives SIGKILL; they report it (outcome ``unkillable``, verification
    ``orphans_left`` with its reason) and go on, because an exception would stop the sequence
    before the final state and the close. The name stays exported for callers that raise it
    from such a report, and for code written against earlier releases.
    """

    def __init__(self, pid: int, detail: str) -> None:
        self.pid = pid
        self.detail = detail
        super().__init__(f"child {pid}: {detail}")


class UnsafeForkError(SessionStoreError):
    """This process was forked while a thread of its parent was inside SQLite.

    SQLite's process-wide mutexes may be held forever in such a child, so the store refuses
    every call into SQLite here rather than hang. It happens only when a fork waited
    ``wait_s`` for the parent's store threads to leave SQLite and they did not.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(
            "this process was forked while a thread of its parent had been inside SQLite for "
            f"over {wait_s:g} s; SQLite's locks may never be released here, so sessionstore "
            "will not use SQLite in this process (fork before starting threads, or use the "
            "'spawn' or 'forkserver' start method)"
        )


def _restore(cls: type[SessionStoreError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Rebuild a pickled error without calling its ``__init__`` (see ``SessionStoreError``)."""
    err = cls.__new__(cls)
    if isinstance(err, OSError):
        OSError.__init__(err, *args)  # errno and strerror live in C slots, not in __dict__
    err.args = args
    err.__dict__.update(state)
    return err


_exports.publish_written_here(__name__)  # last: see _exports
