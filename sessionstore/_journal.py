"""The durable journal beside the database: ops that could not be applied, kept for the next open.

One JSON line per op in ``<db>-ops.jsonl`` (the op's own canonical bytes, :attr:`Op.line`). An
append takes an exclusive ``flock``, writes every line with one ``write`` on an ``O_APPEND``
descriptor and fsyncs before it returns, so lines from several processes never interleave and
an acknowledged line survives a crash.

Replay never holds the lock while it waits for the database: a replayer waiting out another
process's write lock would hold every appender (a shell hook journaling on its way out) for as
long. So it reads the journal under the lock and lets go, applies what it read, and takes the
lock again to remove what it read: the lines it cannot apply go first to
``<db>-ops.rejected.jsonl`` (never dropped), then the file is unlinked, or, when more was
appended meanwhile, replaced by a copy holding only the newer lines. Either way the journal's
name then points at a new file, so whoever consumed lines changed the file's identity: a
replayer that finds the identity changed since its read leaves the file alone (another one took
those lines, and the ones it applied twice are harmless: op ids), and an appender that wakes on
the lock of a file no longer at that name opens the name again. The replayer keeps its
descriptor open from read to removal, so the file's inode number cannot be reused meanwhile. A
crash anywhere replays again, which op ids make harmless.

Every wait for the lock is bounded (``JOURNAL_LOCK_WAIT_S``): the lock is held for a read, a
write and an fsync, so only a holder that is stopped or hung can make anyone wait that long;
then an append raises :class:`JournalBusyError` (the op is not recorded and the caller is told)
and a replay is deferred.

The rejected file holds, per kept-aside line, a reason record and then the line byte-exact::

    {"kept_aside":"rejected: SessionNotFoundError: no session with id 'x'","at":1712345678.9}
    {"op_id":"...","ts":...,"kind":"log_event",...}

Both files are never followed: they are opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a
FIFO planted there cannot block the open), created with ``O_EXCL`` and mode 0600, and must be
regular files owned by this user. Anything else is a :class:`StoreOpenError`, left untouched.

The lock belongs to the open file description, which a forked child shares; a child that kept
its copy would hold the lock after the parent let go, and every process's next append would
block until that child exited. So each operation opens its own descriptor (``O_CLOEXEC``) and
closes it before returning, and an at-fork handler closes, in the child, every descriptor a
journal operation of the parent had open at the fork.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import apsw

from . import _forkgate  # noqa: F401 - its fork hooks register first (_lifecycle.at_fork)
from . import _lifecycle as lifecycle
from ._files import journal_path, rejected_path
from ._models import ReplayReport
from ._ops import BatchDeadlineError, Op, op_from_line
from .errors import (
    JournalBusyError,
    JournalFullError,
    StoreBusyError,
    StoreClosedError,
    StoreCorruptError,
    StoreOpenError,
)

__all__ = [
    "ENVIRONMENT_ERRORS",
    "JOURNAL_LOCK_WAIT_S",
    "Journal",
    "journal_path_for",
    "rejected_path_for",
]

log = logging.getLogger("sessionstore")

ApplyBatch = Callable[[Sequence[Op]], list[Exception | None]]

# How long an append or a replay waits for the journal's lock. Holders keep it for one read or
# one write+fsync (milliseconds), so an idle machine never comes near this; it is sized for
# an overloaded one (8 processes appending at a load average of 15 waited over 2 s: the poll
# below is not a queue) and is reached only against a stopped or hung holder.
JOURNAL_LOCK_WAIT_S = 5.0

# Errors that say the database or the disk cannot take writes right now, not that an op is
# wrong: the ops stay where they are (journal or queue) for a later try, never kept aside.
ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreBusyError,
    TimeoutError,
    OSError,
    apsw.BusyError,
    apsw.LockedError,
    apsw.FullError,
    apsw.IOError,
    apsw.InterruptError,
    apsw.CantOpenError,
    apsw.ReadOnlyError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.NoMemError,
    apsw.ConnectionClosedError,
    apsw.ThreadingViolationError,
    StoreOpenError,
    StoreCorruptError,
    StoreClosedError,
)

# Descriptors of journal files open in this process right now. The lock is held only for an
# open+register or unregister+close, so a fork (which takes it first) never splits the two.
_open_fds: set[int] = set()
_fds_lock = threading.Lock()


class _Turns:
    """First come, first served among the threads of this process appending to one journal.

    ``flock`` serialises appenders but hands the lock to whoever asks next, not to whoever
    asked first: one thread journaling op after op (a store closed under a writing thread)
    re-took it between every poll of a ``close()`` that had to journal the queue it drained,
    and the close gave up at its bound with those ops unrecorded (2 rounds in 20 under load).
    So appenders of one process queue here first, in arrival order, and only the head of the
    queue polls the ``flock`` (against other processes). Rejected: a plain ``threading.Lock``
    in front of the ``flock`` (no order either: the releasing thread, holding the GIL, takes
    it back before a woken waiter runs).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queue: deque[threading.Lock] = deque()  # waiters, each blocked on its own lock
        self._held = False  # invariant: nobody queues while it is free

    def acquire(self, timeout: float) -> bool:
        """Wait for this thread's turn, at most ``timeout`` seconds; True once it is ours."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            mine = threading.Lock()
            mine.acquire()
            self._queue.append(mine)
        try:
            got = mine.acquire(timeout=max(0.0, timeout))
        except BaseException:
            self._give_up(mine)
            raise
        return got or not self._give_up(mine)

    def _give_up(self, mine: threading.Lock) -> bool:
        """Leave the queue; False when the turn had already been handed to us (it is ours)."""
        with self._mutex:
            try:
                self._queue.remove(mine)
            except ValueError:
                return False
            return True

    def release(self) -> None:
        """End this turn: hand it straight to the first waiter, or leave it free."""
        with self._mutex:
            if self._queue:
                self._queue.popleft().release()  # still held: ownership moves to that waiter
            else:
                self._held = False


_turns: dict[str, _Turns] = {}
_turns_lock = threading.Lock()


@contextlib.contextmanager
def _turn(path: str, wait_s: float) -> Iterator[float]:
    """This thread's turn to append to ``path``; yields the seconds left of ``wait_s``.

    Raises:
        JournalBusyError: other threads of this process kept it past ``wait_s``.
    """
    with _turns_lock:
        turns = _turns.setdefault(path, _Turns())
    start = time.monotonic()
    if not turns.acquire(wait_s):
        raise JournalBusyError(path, time.monotonic() - start)
    try:
        yield max(0.0, wait_s - (time.monotonic() - start))
    finally:
        turns.release()


def _before_fork() -> None:
    _fds_lock.acquire()


def _after_fork_in_parent() -> None:
    _fds_lock.release()


def _after_fork_in_child() -> None:
    global _fds_lock, _turns_lock
    # Close, never unlock: LOCK_UN on the shared description would release the parent's lock.
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()
    _fds_lock = threading.Lock()
    _turns.clear()  # the threads queued in them do not exist here
    _turns_lock = threading.Lock()


lifecycle.at_fork(
    __name__,
    "the child closes the parent's journal descriptors (their flock is shared)",
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def journal_path_for(db_path: str) -> str:
    """The journal file of the database at ``db_path`` (a resolved path)."""
    return journal_path(db_path)


def rejected_path_for(db_path: str) -> str:
    """The file of kept-aside journal lines of the database at ``db_path``."""
    return rejected_path(db_path)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _refusal(path: str, st: os.stat_result) -> str | None:
    """Why a side file with status ``st`` must not be used, or None when it is fine."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link; sessionstore never follows one there"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file (a FIFO, device or directory was put there)"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
    return None


def check_side_file(path: str) -> None:
    """Refuse a side file that is a symlink, not a regular file, or another user's.

    Raises:
        StoreOpenError: what is at ``path`` must not be used; it was not touched.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    reason = _refusal(path, st)
    if reason is not None:
        raise StoreOpenError(path, reason)


def _open_side_file(path: str, access: int, *, create: bool) -> tuple[int, bool]:
    """Open ``path`` without following it; returns ``(fd, created)``, the fd registered.

    Raises:
        FileNotFoundError: missing and ``create`` is False.
        StoreOpenError: a symlink, a non-regular file or another user's file is there.
        OSError: the open itself failed.
    """
    base = access | os.O_NOFOLLOW | os.O_CLOEXEC
    with _fds_lock:
        for _ in range(3):  # a file removed between the two opens is simply tried again
            if create:
                try:
                    fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    _open_fds.add(fd)
                    return fd, True
            try:
                # O_NONBLOCK: opening a FIFO must not wait for its other end.
                fd = os.open(path, base | os.O_NONBLOCK)
            except FileNotFoundError:
                if create:
                    continue
                raise
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENXIO):
                    check_side_file(path)  # names the reason
                    raise StoreOpenError(path, f"refusing to open it: {err}") from err
                raise
            try:
                reason = _refusal(path, os.fstat(fd))
                if reason is not None:
                    raise StoreOpenError(path, reason)
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            except BaseException:
                os.close(fd)
                raise
            _open_fds.add(fd)
            return fd, False
        raise FileNotFoundError(errno.ENOENT, "created and removed again while opening", path)


def _close(fd: int) -> None:
    with _fds_lock:
        if fd not in _open_fds:
            return  # closed by the at-fork handler: this is a forked child
        _open_fds.discard(fd)
        os.close(fd)  # closing releases the flock


def _flock(fd: int, path: str, wait_s: float) -> None:
    """Take the exclusive lock on ``fd``, waiting at most ``wait_s``.

    Raises:
        JournalBusyError: another process held it all that time.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    # Polled, not a blocking flock on a helper thread: a thread left blocked in flock would
    # take the lock after we gave up and keep it from everyone.
    start = time.monotonic()
    pause = 0.0005
    while True:
        left = wait_s - (time.monotonic() - start)
        if left <= 0:
            raise JournalBusyError(path, time.monotonic() - start)
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.005)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            continue


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open on ``fd`` (a replay may have replaced it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def _reason_line(reason: str, at: float) -> bytes:
    text = json.dumps({"kept_aside": reason, "at": at}, ensure_ascii=True)
    return text.encode("ascii") + b"\n"


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:2000]


class Journal:
    """Append-only, fsynced op journal shared by every process using one database."""

    def __init__(self, db_path: str, *, max_bytes: int) -> None:
        self.path = journal_path_for(db_path)
        self.rejected_path = rejected_path_for(db_path)
        self.max_bytes = max_bytes

    def check(self) -> None:
        """Refuse to work with side files that are symlinks, not regular, or another user's.

        Raises:
            StoreOpenError: the journal or the rejected file must not be used (left untouched).
        """
        check_side_file(self.path)
        check_side_file(self.rejected_path)

    def size(self) -> int:
        """Bytes in the journal now (0 when there is none, or it is not a regular file)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    @contextlib.contextmanager
    def _locked(self, access: int, *, create: bool, wait_s: float) -> Iterator[int]:
        """The journal open and locked; the file the name points at when the lock was taken.

        Raises:
            FileNotFoundError: no journal and ``create`` is False.
            JournalBusyError: the lock stayed held past ``wait_s``.
            StoreOpenError, OSError: as ``_open_side_file``.
        """
        start = time.monotonic()
        while True:
            fd, created = _open_side_file(self.path, access, create=create)
            try:
                _flock(fd, self.path, max(0.0, wait_s - (time.monotonic() - start)))
                if _same_file(fd, self.path):
                    break
            except BaseException:
                _close(fd)
                raise
            _close(fd)  # a replay replaced the file while we waited: open the name again
        try:
            if created:
                _fsync_dir(self.path)  # the new file's name must survive a crash too
            yield fd
        finally:
            _close(fd)

    def append(self, ops: Sequence[Op], *, lock_wait_s: float = JOURNAL_LOCK_WAIT_S) -> None:
        """Durably append ``ops``, all or none, as one write.

        Raises:
            JournalFullError: the journal would pass ``max_bytes``; nothing was written.
            JournalBusyError: another process held the journal's lock past ``lock_wait_s``;
                nothing was written.
            StoreOpenError: the journal is a symlink, FIFO or another user's file; untouched.
            OSError: the write or fsync failed (disk full, file too large, I/O error); nothing
                is left of it and the caller still holds the ops and must report them.
        """
        if not ops:
            return
        data = b"".join(op.line for op in ops)
        with (
            _turn(self.path, lock_wait_s) as left_s,
            self._locked(os.O_WRONLY | os.O_APPEND, create=True, wait_s=left_s) as fd,
        ):
            size = os.fstat(fd).st_size
            if size + len(data) > self.max_bytes:
                raise JournalFullError(self.path, size, self.max_bytes)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                # Cut off a partial write so a later append does not glue onto half a line.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise

    def keep_aside(self, entries: Sequence[tuple[bytes, str]]) -> None:
        """Append ``(line, reason)`` entries to the rejected file (fsynced): never dropped.

        Raises:
            StoreOpenError: the rejected file is a symlink, FIFO or another user's file.
            OSError: it could not be written.
        """
        if not entries:
            return
        now = time.time()
        data = b"".join(
            _reason_line(reason, now) + line.rstrip(b"\n") + b"\n" for line, reason in entries
        )
        fd, created = _open_side_file(self.rejected_path, os.O_WRONLY | os.O_APPEND, create=True)
        try:
            _write_all(fd, data)
            os.fsync(fd)
            if created:
                _fsync_dir(self.rejected_path)
        finally:
            _close(fd)

    def keep_aside_ops(self, ops: Sequence[Op], reasons: Sequence[str]) -> None:
        """Keep ops that could not be applied in the rejected file, each with its reason.

        Raises:
            StoreOpenError, OSError: as :meth:`keep_aside`.
        """
        self.keep_aside([(op.line, reason) for op, reason in zip(ops, reasons, strict=True)])

    def replay(
        self, apply_batch: ApplyBatch, *, lock_wait_s: float = JOURNAL_LOCK_WAIT_S
    ) -> ReplayReport:
        """Apply every complete line, keep the rest aside with their reasons, remove them.

        Every line that cannot be applied for any reason of its own (not an op, breaks a rule,
        unknown session, a constraint, an error binding it...) is kept aside and the others are
        applied: one bad line never holds the journal back. The journal's lock is held only
        to read and to remove what was read, never while ``apply_batch`` waits (module doc).

        Args:
            apply_batch: applies ops in one transaction and returns, per op, None or the error
                that op raised (such an op is rejected; the others are committed).
            lock_wait_s: the longest wait for the journal's lock, each of the two times.

        Returns:
            Counts of applied, rejected, invalid and torn lines; ``deferred`` says why nothing
            was done, or why the lines applied were left in the journal (applied again later).

        Raises:
            StoreOpenError: the journal or rejected file is not safe to use; both untouched.
            StoreBusyError, OSError, apsw.Error (of ``ENVIRONMENT_ERRORS``): the database or
                disk could not take the writes; the journal is left as it was (what did commit
                is applied again harmlessly next time).
        """
        if self.size() == 0:
            return ReplayReport()  # the common case: no lock, no file created
        pid = os.getpid()
        with contextlib.ExitStack() as stack:
            try:
                fd = stack.enter_context(self._locked(os.O_RDWR, create=False, wait_s=lock_wait_s))
            except FileNotFoundError:
                return ReplayReport()  # replayed and removed by someone else meanwhile
            except JournalBusyError as err:
                return ReplayReport(deferred=str(err))
            raw = _read_all(fd)
            # Let go while the database is written (the descriptor stays open: module doc).
            fcntl.flock(fd, fcntl.LOCK_UN)
            if not raw:
                return ReplayReport()
            lines = raw.split(b"\n")
            tail = lines.pop()  # b"" when the journal ends with a newline, else a torn line
            ops: list[Op] = []
            op_lines: list[bytes] = []
            kept: list[tuple[bytes, str]] = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    ops.append(op_from_line(line))
                    op_lines.append(line)
                except Exception as err:  # any unreadable line is kept aside
                    log.warning("journal %s: invalid line kept aside: %s", self.path, err)
                    kept.append((line, f"invalid: {_one_line(err)}"))
            invalid = len(kept)
            errors = apply_isolated(apply_batch, ops)
            if os.getpid() != pid:
                # apply_batch forked and this is the child: its descriptor was closed at the
                # fork, and the journal is the parent's to finish.
                raise RuntimeError("forked inside a journal replay; the child must not go on")
            for line, op, failure in zip(op_lines, ops, errors, strict=True):
                if failure is not None:
                    log.warning("journal op %s (%s) rejected: %s", op.op_id, op.kind, failure)
                    kept.append((line, f"rejected: {_one_line(failure)}"))
            rejected = len(kept) - invalid
            applied = len(ops) - rejected
            try:
                _flock(fd, self.path, lock_wait_s)
            except JournalBusyError as err:
                return ReplayReport(applied=applied, deferred=f"left in the journal: {err}")
            size = os.fstat(fd).st_size
            if not _same_file(fd, self.path) or size < len(raw):
                # Another replay consumed these lines (and kept its rejects aside) meanwhile.
                return ReplayReport(applied=applied, deferred="consumed by another replay")
            if tail:
                log.warning("journal %s: torn last line (crash mid-append) kept aside", self.path)
                kept.append((tail, "torn: an incomplete last line (a crash mid-append)"))
            self.keep_aside(kept)
            self._remove_prefix(fd, len(raw), size)
            return ReplayReport(
                applied=applied,
                rejected=rejected,
                invalid=invalid,
                torn=1 if tail else 0,
                rejected_path=self.rejected_path if kept else None,
            )

    def _remove_prefix(self, fd: int, prefix: int, size: int) -> None:
        """Drop the first ``prefix`` bytes of the journal open (and locked) on ``fd``.

        The name is made to point at a new file (unlinked, or replaced by a copy of the lines
        after ``prefix``): never truncated in place, so a replayer that read earlier can tell.
        """
        if size == prefix:
            os.unlink(self.path)
            _fsync_dir(self.path)
            return
        os.lseek(fd, prefix, os.SEEK_SET)
        rest = _read_all(fd)
        tmp = f"{self.path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(tmp, flags, 0o600)
        try:
            _write_all(out, rest)
            os.fsync(out)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(out)
        os.replace(tmp, self.path)
        _fsync_dir(self.path)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def apply_isolated(apply_batch: ApplyBatch, ops: Sequence[Op]) -> list[Exception | None]:
    """Apply ``ops`` in one batch; if the batch fails because of one op, find it and go on.

    A batch that raises something other than ``ENVIRONMENT_ERRORS`` (an op that cannot be
    bound, say) is redone one op per transaction, so that op alone is rejected.

    Returns:
        Per op, None (applied) or the error that rejected it.

    Raises:
        BatchDeadlineError: ``apply_batch`` is timed and its deadline came, in the batch or
            between two of the one-op transactions; its ``results`` are those of the ops
            before ``len(results)`` (each committed or rejected), the rest were not tried.
        Exception: another of ``ENVIRONMENT_ERRORS``; ops before it may have been applied.
    """
    if not ops:
        return []
    try:
        return apply_batch(ops)
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as batch_err:  # isolated below, op by op
        log.warning("a batch of %d op(s) failed (%s); applying one by one", len(ops), batch_err)
    out: list[Exception | None] = []
    for op in ops:
        try:
            [result] = apply_batch([op])
        except BatchDeadlineError as stop:
            # A timed apply_batch tries nothing past its deadline: stop here, saying how far
            # this whole call got, rather than run a transaction per op past the deadline.
            raise BatchDeadlineError(stop.path, out, len(ops)) from None
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as err:  # this op alone failed: rejected
            result = err
        out.append(result)
    return out
