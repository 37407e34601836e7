"""The durable journal beside the database: ops that could not be applied, kept for the next open.

One JSON line per op in ``<db>-ops.jsonl``, mode 0600. An append takes an exclusive ``flock``,
writes the whole line with one ``write`` on an ``O_APPEND`` descriptor and fsyncs before it
returns, so lines from several processes never interleave and an acknowledged line survives a
crash. Replay takes the same lock, applies every complete line, moves lines it cannot apply to
``<db>-ops.rejected.jsonl`` (never dropped), and truncates the journal only after the apply
committed: a crash in between replays again, which op ids make harmless.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

from pydantic import ValidationError

from ._models import ReplayReport
from ._ops import Op, op_adapter
from .errors import JournalFullError

__all__ = ["Journal", "journal_path_for"]

log = logging.getLogger("sessionstore")

ApplyBatch = Callable[[Sequence[Op]], list[Exception | None]]


def journal_path_for(db_path: str) -> str:
    """The journal file of the database at ``db_path``."""
    return f"{db_path}-ops.jsonl"


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _line(op: Op) -> bytes:
    return op_adapter.dump_json(op) + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Journal:
    """Append-only, fsynced op journal shared by every process using one database."""

    def __init__(self, db_path: str, *, max_bytes: int) -> None:
        self.path = journal_path_for(db_path)
        self.rejected_path = f"{db_path}-ops.rejected.jsonl"
        self.max_bytes = max_bytes

    def size(self) -> int:
        """Bytes in the journal now (0 when there is none)."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    @contextlib.contextmanager
    def _locked(self, flags: int) -> Iterator[int]:
        created = not os.path.exists(self.path)
        fd = os.open(self.path, flags | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created and flags & os.O_CREAT:
                _fsync_dir(self.path)  # the new file's name must survive a crash too
            yield fd
        finally:
            os.close(fd)  # closing releases the flock

    def append(self, ops: Sequence[Op]) -> None:
        """Durably append ``ops``, all or none, as one write.

        Raises:
            JournalFullError: the journal would pass ``max_bytes``; nothing was written.
            OSError: the write or fsync failed (disk full, I/O error); the caller still holds
                the ops and must report them.
        """
        if not ops:
            return
        data = b"".join(_line(op) for op in ops)
        with self._locked(os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
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

    def keep_aside(self, lines: Sequence[bytes]) -> None:
        """Append lines that could not be applied to the rejected file (fsynced): never dropped."""
        if not lines:
            return
        fd = os.open(
            self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            _write_all(fd, b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep_aside_ops(self, ops: Sequence[Op]) -> None:
        """Keep ops that could not be applied in the rejected file (fsynced): never dropped."""
        self.keep_aside([_line(op) for op in ops])

    def replay(self, apply_batch: ApplyBatch) -> ReplayReport:
        """Apply every complete line, keep the rest aside, then empty the journal.

        Args:
            apply_batch: applies ops in one transaction and returns, per op, None or the error
                that op raised (such an op is rejected; the others are committed). If it raises,
                nothing was committed and the journal is left as it was.

        Returns:
            Counts of applied, rejected, invalid and torn lines.
        """
        if self.size() == 0:
            return ReplayReport()  # the common case: no lock, no file created
        with self._locked(os.O_RDWR | os.O_CREAT) as fd:
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
            invalid: list[bytes] = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    ops.append(op_adapter.validate_json(line))
                    op_lines.append(line)
                except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as err:
                    log.warning("journal %s: invalid line kept aside: %s", self.path, err)
                    invalid.append(line)
            errors = apply_batch(ops) if ops else []
            rejected = [line for line, err in zip(op_lines, errors, strict=True) if err is not None]
            for op, failure in zip(ops, errors, strict=True):
                if failure is not None:
                    log.warning("journal op %s (%s) rejected: %s", op.op_id, op.kind, failure)
            torn = [tail] if tail else []
            if torn:
                log.warning("journal %s: torn last line (crash mid-append) kept aside", self.path)
            self.keep_aside(invalid + rejected + torn)
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return ReplayReport(
                applied=len(ops) - len(rejected),
                rejected=len(rejected),
                invalid=len(invalid),
                torn=len(torn),
                rejected_path=self.rejected_path if (invalid or rejected or torn) else None,
            )


def is_disk_error(err: OSError) -> bool:
    """True for the OS errors that mean the disk, not the caller, failed."""
    return err.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS)
