"""Opening apsw connections the one right way, and the one retry policy for BUSY.

Every connection gets, in this order: a busy handler (so nothing below fails at the first lock),
a read that proves the file is a database (before anything could write to it), WAL mode (set
only when it is not already WAL: switching needs an exclusive lock), ``synchronous``, foreign
keys and ``journal_size_limit``. Each pragma is its own call whose result is read: apsw runs a
multi-statement string lazily, so a later statement could silently never run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import struct
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import apsw

from ._files import shm_path, wal_path
from ._forkgate import FORK_GATE
from .errors import StoreBusyError, StoreCorruptError, StoreIOError, StoreOpenError

if TYPE_CHECKING:
    import tenacity

    from ._config import StoreConfig  # a type only: `status` opens a connection without pydantic

__all__ = [
    "BusySettings",
    "Clock",
    "RetryPolicy",
    "is_transient_busy",
    "open_connection",
    "open_read_only",
    "read_only_mode",
    "translate_open_error",
]

log = logging.getLogger("sessionstore")

T = TypeVar("T")
Clock = Callable[[], float]


def is_transient_busy(err: BaseException) -> bool:
    """True for the lock errors that redoing the whole transaction can cure.

    Selected by type, never by message text: ``BusyError`` carries every BUSY variant
    (``SQLITE_BUSY`` 5, ``_RECOVERY`` 261, ``_SNAPSHOT`` 517, ``_TIMEOUT`` 773). ``LockedError``
    is not here: with shared cache compiled out it means a conflict inside one connection,
    which waiting does not fix.
    """
    return isinstance(err, apsw.BusyError)


class RetryPolicy:
    """Redo a whole transaction on transient BUSY, with jitter, until a monotonic deadline.

    The first attempt runs without tenacity (the common, uncontended case costs nothing extra);
    only a BUSY enters the tenacity loop. ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        deadline_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.deadline_s = deadline_s
        self._clock = clock
        self._sleep = sleep

    def call(
        self,
        fn: Callable[[], T],
        *,
        path: str,
        operation: str,
        abort: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run ``fn`` and redo it on transient BUSY until the deadline.

        Args:
            fn: the whole transaction (or read) to run.
            path: the database, for the error.
            operation: what ``fn`` does, for the error.
            abort: when it returns True, stop retrying at once (a close gave up waiting).
            deadline: when to stop, on this policy's clock; default ``deadline_s`` from now.
                The first attempt counts: the whole call is bounded, not the retries. A
                deadline already passed still gets one attempt.

        Raises:
            StoreBusyError: still BUSY at the deadline, or aborted (chains the last
                ``apsw.BusyError``).
            Exception: anything else ``fn`` raises, unchanged.
        """
        start = self._clock()
        end = start + self.deadline_s if deadline is None else deadline
        try:
            return fn()
        except apsw.BusyError as err:
            return self.after_busy(
                fn, err, path=path, operation=operation, start=start, end=end, abort=abort
            )

    def after_busy(
        self,
        fn: Callable[[], T],
        err: apsw.BusyError,
        *,
        path: str,
        operation: str,
        start: float,
        end: float,
        abort: Callable[[], bool] | None = None,
    ) -> T:
        """Redo ``fn`` after its first attempt (begun at ``start``) raised ``err``, until ``end``.

        For a caller that ran the first attempt itself, outside :meth:`call` (the writer's
        path for one op, where each wrapper layer is a measurable share of the op's cost).

        Raises:
            StoreBusyError: still BUSY at ``end``, or aborted (chains the last BUSY).
            Exception: anything else ``fn`` raises, unchanged.
        """
        if self._clock() >= end or (abort is not None and abort()):
            raise StoreBusyError(path, operation, self._clock() - start) from err
        # Imported on the first BUSY only: the uncontended path, and ``import sessionstore``,
        # never pay for it.
        import tenacity

        def out_of_time(_state: tenacity.RetryCallState) -> bool:
            if abort is not None and abort():
                return True
            return self._clock() >= end

        jitter = tenacity.wait_random_exponential(multiplier=0.001, max=0.05)

        def wait(state: tenacity.RetryCallState) -> float:
            # Never sleep past the deadline: the bound is on the whole call.
            return max(0.0, min(jitter(state), end - self._clock()))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient_busy),
            stop=out_of_time,
            wait=wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except apsw.BusyError as err:
            raise StoreBusyError(path, operation, self._clock() - start) from err


def fair_busy_handler(
    timeout_ms: Callable[[], float], should_abort: Callable[[], bool] = lambda: False
) -> Callable[[int], bool]:
    """A busy handler that sleeps 0.1-2 ms per retry until ``timeout_ms()`` has passed.

    SQLite's own handler sleeps 1, 2, 5 ... 100 ms: a waiter asleep for 100 ms misses every
    lock release in between, so under contention one process starves the others for seconds.
    Short jittered sleeps hand the lock over within a millisecond and share it fairly.

    Args:
        timeout_ms: read at the start of each wait, so a caller can shorten it for one
            statement (checkpoints) without reinstalling the handler.
        should_abort: when it returns True the wait gives up at once (a close that abandoned
            leases uses it to free threads stuck waiting on another process's lock).
    """
    deadline = 0.0

    def handler(prior_calls: int) -> bool:
        nonlocal deadline
        if should_abort():
            return False
        now = time.monotonic()
        if prior_calls == 0:
            deadline = now + timeout_ms() / 1000.0
        elif now >= deadline:
            return False
        # Pacing a retry of a real lock, not synchronising anything: the lock holder is another
        # process, and SQLite offers no way to be woken when it lets go.
        time.sleep(random.uniform(0.0001, 0.001 if prior_calls < 20 else 0.002))
        return True

    return handler


class BusySettings(Protocol):
    """How a connection waits for another process's lock (a :class:`StoreConfig` is one)."""

    @property
    def busy_timeout_ms(self) -> int: ...

    @property
    def busy_handler(self) -> str: ...


def set_busy(conn: apsw.Connection, config: BusySettings) -> None:
    """Install the configured busy strategy on ``conn``."""
    ms = config.busy_timeout_ms
    if config.busy_handler == "fair" and ms > 0:
        conn.set_busy_handler(fair_busy_handler(lambda: ms))
    else:
        conn.set_busy_timeout(ms)


def translate_open_error(path: str, err: apsw.Error, operation: str = "open") -> Exception:
    """Map an apsw error raised while opening, reading or checkpointing ``path`` to ours."""
    if isinstance(err, (apsw.NotADBError, apsw.CorruptError)):
        return StoreCorruptError(path, f"{type(err).__name__}: {err}")
    if isinstance(err, apsw.BusyError):
        return StoreBusyError(path, operation, 0.0)
    if isinstance(err, (apsw.IOError, apsw.FullError)):
        return StoreIOError(path, operation, f"{type(err).__name__}: {err}")
    return StoreOpenError(path, f"{type(err).__name__}: {err}")


def _pragma(conn: apsw.Connection, name: str, value: object = None) -> object:
    return conn.pragma(name) if value is None else conn.pragma(name, value)


def open_connection(
    path: str, config: StoreConfig, policy: RetryPolicy, *, query_only: bool = False
) -> apsw.Connection:
    """Open ``path`` with every setting in place.

    Args:
        path: the database file (created when missing); ``:memory:`` is not supported because a
            memory database cannot be shared between connections.
        config: the store settings.
        policy: the retry policy for BUSY while switching to WAL.
        query_only: refuse every write on this connection (the read pool's connections:
            writes must go through the writer's BEGIN IMMEDIATE transactions).

    Returns:
        A connection in WAL mode with the busy handler, ``synchronous``, foreign keys and
        ``journal_size_limit`` set.

    Raises:
        StoreCorruptError: the file is not a SQLite database or is corrupt (left untouched).
        StoreOpenError: the file cannot be opened at all, or not for writing.
        StoreBusyError: locked past the retry deadline.
    """
    if os.path.isdir(path):
        raise StoreOpenError(path, "is a directory")
    with FORK_GATE.section():  # SQLite's open-file and allocator mutexes must be free at a fork
        return _open_connection(path, config, policy, query_only)


def _open_connection(
    path: str, config: StoreConfig, policy: RetryPolicy, query_only: bool
) -> apsw.Connection:
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    except apsw.Error as err:
        raise translate_open_error(path, err) from err
    try:
        if conn.readonly("main"):
            # SQLite fell back to read-only (the file is not writable by this process): every
            # write would fail later, one by one. Say so now.
            raise StoreOpenError(
                path, "not writable by this process; open it with read_only=True to read it"
            )
        set_busy(conn, config)
        # Prove it is a database before anything could write to it.
        policy.call(
            lambda: conn.execute("SELECT count(*) FROM sqlite_schema").fetchall(),
            path=path,
            operation="open",
        )
        mode = str(_pragma(conn, "journal_mode")).lower()
        if mode != "wal":
            mode = str(
                policy.call(
                    lambda: _pragma(conn, "journal_mode", "wal"), path=path, operation="enable WAL"
                )
            ).lower()
            if mode != "wal":
                raise StoreOpenError(path, f"could not switch to WAL (journal_mode is {mode})")
        _pragma(conn, "synchronous", config.synchronous)
        _pragma(conn, "foreign_keys", "ON")
        _pragma(conn, "journal_size_limit", config.journal_size_limit)
        if query_only:
            _pragma(conn, "query_only", "ON")
    except BaseException as err:
        conn.close(True)
        if isinstance(err, apsw.Error):
            raise translate_open_error(path, err) from err
        raise
    return conn


_SQLITE_LOCK_BYTES = (0x40000000, 512)  # PENDING, RESERVED and SHARED bytes of the unix VFS


def _locked_by_another(path: str) -> bool:
    """Whether another process holds any of SQLite's POSIX locks on ``path`` (Linux only).

    Only called when no ``-shm`` exists, so no connection of this process has the file open:
    closing a descriptor drops every POSIX lock this *process* holds on the file, which would
    break SQLite's own locks if it had one.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # unreadable: the open that follows says so
    try:
        query = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, *_SQLITE_LOCK_BYTES, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        return bool(struct.unpack("hh4xqqi4x", answer)[0] != fcntl.F_UNLCK)
    finally:
        os.close(fd)


def read_only_mode(path: str, timeout_s: float, *, probe_locks: bool = True) -> str | None:
    """How a read-only store must read ``path`` without creating or changing any file.

    Args:
        path: the database.
        timeout_s: how long to wait while the answer is in flux: SQLite's locks held with no
            ``-shm`` beside the file (a connection opening, or the last one closing, holds them
            for a moment; a connection in exclusive locking mode holds them for good).
        probe_locks: False when this process has the file open through SQLite itself:
            closing the probe's descriptor would drop every POSIX lock the process holds on
            it. The answer is then "wait for -shm".

    Returns:
        None when a plain ``mode=ro`` connection creates nothing (``-wal`` and ``-shm`` are
        both there, so some process has the database open); otherwise why the file is read
        as an immutable snapshot instead (SQLite would create ``-wal``/``-shm`` for a WAL
        database, owned by whoever reads, and leave them behind: measured).

    Raises:
        StoreBusyError: for all of ``timeout_s``, no ``-shm``, yet another process held
            SQLite's locks on the file: neither kind of read is safe.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        if os.path.exists(wal_path(path)) and os.path.exists(shm_path(path)):
            return None
        if probe_locks and not _locked_by_another(path):
            return (
                "no process has the database open (no -wal/-shm): read as an immutable "
                "snapshot, without locks; a write that starts while it is read is not seen"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            # Reading without locks could see a half-written page of the lock holder.
            raise StoreBusyError(path, "open read-only (locked, no -shm)", timeout_s)
        time.sleep(min(pause, left))  # like SQLite's own busy handler: back off and look again
        pause = min(pause * 2, 0.05)


def open_read_only(path: str, config: BusySettings, *, snapshot: bool) -> apsw.Connection:
    """A connection that can never write or create a file.

    ``mode=ro`` (and ``immutable=1`` when ``snapshot``), ``query_only``, and no journal-mode
    switch or any other pragma that writes.

    Raises:
        StoreCorruptError: the file is not a SQLite database or is corrupt.
        StoreOpenError: it cannot be opened.
    """
    query = "?mode=ro&immutable=1" if snapshot else "?mode=ro"
    uri = "file:" + urllib.parse.quote(path) + query
    try:
        with FORK_GATE.section():
            conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except apsw.Error as err:
        raise translate_open_error(path, err) from err
    try:
        set_busy(conn, config)
        _pragma(conn, "query_only", "ON")
    except BaseException as err:
        conn.close(True)
        if isinstance(err, apsw.Error):
            raise translate_open_error(path, err) from err
        raise
    return conn


def in_transaction(conn: apsw.Connection, body: Callable[[], T]) -> T:
    """``BEGIN IMMEDIATE``, ``body()``, ``COMMIT``; rolled back on any exception.

    ``conn.transaction_mode`` must be ``"IMMEDIATE"`` (what ``with conn:`` begins). apsw's
    context manager does all three in C: no exception, not even one a signal handler raises,
    can fall between them (see ``_writer``). The one write-transaction wrapper of the package:
    the writer's ops and batches and the migrations run in it (``_peek``'s read transaction
    is a bare ``with conn:`` in the default DEFERRED mode).

    Raises:
        BaseException: what ``body`` raised (rolled back), or what a signal handler raised
            inside the commit hook (the commit itself happened: the op is applied).
    """
    try:
        with conn:
            result = body()
    except apsw.SQLError as err:
        # A signal handler's exception inside the commit hook (Python code SQLite calls right
        # after the commit) makes apsw report the COMMIT as failed and then fail its ROLLBACK,
        # raising "SQL logic error" in place of, say, the KeyboardInterrupt. The commit did
        # happen; pass the caller the exception the handler raised, not SQLite's.
        hook_error = err.__context__
        if hook_error is None or isinstance(hook_error, apsw.Error) or conn.txn_state():
            raise
        raise hook_error from None
    return result
