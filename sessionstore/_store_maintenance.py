"""The maintenance methods of :class:`sessionstore.SessionStore`.

Journal replay, WAL checkpoints (on demand and the timer's), applying ops made elsewhere,
journaling what is queued, and the delegates to ``_maintenance`` (prune, vacuum, backup).
Grouped out of ``_store`` by topic; what they use of the store is declared in ``_store_base``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import apsw

from ._connection import translate_open_error
from ._models import CheckpointResult, ReplayReport, StoreState
from ._ops import Op
from ._store_base import StoreCore
from .errors import StoreClosedError, StoreReadOnlyError

if TYPE_CHECKING:
    from ._maintenance import BackupReport, PruneReport, VacuumReport

log = logging.getLogger("sessionstore")


class MaintenanceMethods(StoreCore):
    """Replay, checkpoints, outside ops, prune, vacuum, backup (``SessionStore`` has them)."""

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

    def prune_sessions(self, before: float, *, deadline_s: float | None = None) -> PruneReport:
        """Delete sessions ended before ``before``; see :func:`._maintenance.prune_sessions`."""
        from ._maintenance import prune_sessions

        return prune_sessions(self, before, deadline_s=deadline_s)

    def vacuum(self) -> VacuumReport:
        """Rebuild the file compactly; see :func:`sessionstore._maintenance.vacuum`."""
        from ._maintenance import vacuum

        return vacuum(self)

    def backup(self, dest: str, *, force: bool = False) -> BackupReport:
        """Copy the database to ``dest`` online; see :func:`sessionstore._maintenance.backup`."""
        from ._maintenance import backup

        return backup(self, dest, force=force)
