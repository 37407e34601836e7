"""The durable journal beside the database: ops that could not be applied, kept for the next open.

One JSON line per op in ``<db>-ops.jsonl`` (the op's own canonical bytes, :attr:`Op.line`). An
append takes an exclusive ``flock``, writes every line with one ``write`` on an ``O_APPEND``
descriptor and fsyncs before it returns, so lines from several processes never interleave and
an acknowledged line survives a crash. Replay takes the same lock, applies every complete line,
keeps the lines it cannot apply in ``<db>-ops.rejected.jsonl`` (never dropped), and truncates the
journal only after the apply committed: a crash in between replays again, which op ids make
harmless.

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
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import apsw

from . import _lifecycle as lifecycle
from ._files import journal_path, rejected_path
from ._models import ReplayReport
from ._ops import Op, op_from_line
from .errors import (
    JournalFullError,
    StoreBusyError,
    StoreClosedError,
    StoreCorruptError,
    StoreOpenError,
)

__all__ = [
    "ENVIRONMENT_ERRORS",
    "Journal",
    "journal_path_for",
    "rejected_path_for",
]

log = logging.getLogger("sessionstore")

ApplyBatch = Callable[[Sequence[Op]], list[Exception | None]]

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


def _before_fork() -> None:
    _fds_lock.acquire()


def _after_fork_in_parent() -> None:
    _fds_lock.release()


def _after_fork_in_child() -> None:
    global _fds_lock
    # Close, never unlock: LOCK_UN on the shared description would release the parent's lock.
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()
    _fds_lock = threading.Lock()


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
    def _locked(self, access: int, *, create: bool) -> Iterator[int]:
        fd, created = _open_side_file(self.path, access, create=create)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                _fsync_dir(self.path)  # the new file's name must survive a crash too
            yield fd
        finally:
            _close(fd)

    def append(self, ops: Sequence[Op]) -> None:
        """Durably append ``ops``, all or none, as one write.

        Raises:
            JournalFullError: the journal would pass ``max_bytes``; nothing was written.
            StoreOpenError: the journal is a symlink, FIFO or another user's file; untouched.
            OSError: the write or fsync failed (disk full, file too large, I/O error); nothing
                is left of it and the caller still holds the ops and must report them.
        """
        if not ops:
            return
        data = b"".join(op.line for op in ops)
        with self._locked(os.O_WRONLY | os.O_APPEND, create=True) as fd:
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

    def replay(self, apply_batch: ApplyBatch) -> ReplayReport:
        """Apply every complete line, keep the rest aside with their reasons, empty the journal.

        Every line that cannot be applied for any reason of its own (not an op, breaks a rule,
        unknown session, a constraint, an error binding it...) is kept aside and the others are
        applied: one bad line never holds the journal back.

        Args:
            apply_batch: applies ops in one transaction and returns, per op, None or the error
                that op raised (such an op is rejected; the others are committed).

        Returns:
            Counts of applied, rejected, invalid and torn lines.

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
                fd = stack.enter_context(self._locked(os.O_RDWR, create=False))
            except FileNotFoundError:
                return ReplayReport()  # replayed and removed by someone else meanwhile
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            raw = b"".join(chunks)
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
            if tail:
                log.warning("journal %s: torn last line (crash mid-append) kept aside", self.path)
                kept.append((tail, "torn: an incomplete last line (a crash mid-append)"))
            self.keep_aside(kept)
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return ReplayReport(
                applied=len(ops) - rejected,
                rejected=rejected,
                invalid=invalid,
                torn=1 if tail else 0,
                rejected_path=self.rejected_path if kept else None,
            )


def apply_isolated(apply_batch: ApplyBatch, ops: Sequence[Op]) -> list[Exception | None]:
    """Apply ``ops`` in one batch; if the batch fails because of one op, find it and go on.

    A batch that raises something other than ``ENVIRONMENT_ERRORS`` (an op that cannot be
    bound, say) is redone one op per transaction, so that op alone is rejected.

    Returns:
        Per op, None (applied) or the error that rejected it.

    Raises:
        Exception: one of ``ENVIRONMENT_ERRORS``; ops before it may have been applied.
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
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as err:  # this op alone failed: rejected
            result = err
        out.append(result)
    return out
