"""Keeping the WAL bounded: when to checkpoint (a pure schedule) and the thread that does it.

Where the TRUNCATE runs matters. Run from a separate connection, a TRUNCATE that waits for
readers holds the checkpoint lock the whole time, so every writer's own auto-checkpoint fails
silently and the WAL balloons. So checkpoints run on the store's writer connection, under the
writer's in-process lock, between two write transactions, with a short busy timeout (a TRUNCATE
holds the database's write lock while it waits for readers, stalling other processes'
writers). Busy means "try again later", with a backoff.

Two triggers. Size: every commit passes through ``set_wal_hook``; when the WAL is past
``checkpoint_wal_bytes`` the committing thread runs a RESTART right there (a TRUNCATE without
the cut to 0 bytes: ``journal_size_limit`` cuts the file back, and a file truncated to 0 every
4 MiB only to grow again at once cost 15-40 % of the write throughput). PASSIVE alone, which
is all SQLite's auto-checkpoint does, cannot bound the WAL when several processes write without
pause: the WAL only restarts from its beginning when it is fully backfilled at the moment a
writer begins, and with writers queued back to back another commit has always landed after the
backfill (measured here: 4 processes writing for 3 s grew the WAL to 162 MB with PASSIVE only).
A RESTART takes the write lock, so nothing lands between its backfill and its reset. A
process whose RESTART finds another process's checkpoint running steps back for 2 ms: that
checkpoint may be waiting for the write lock that the writers keep handing to each other.
Time: a daemon thread wakes every ``checkpoint_interval_s`` and TRUNCATEs, so an idle WAL is
emptied to 0 bytes; ``close()`` TRUNCATEs too.

The hook replaces SQLite's auto-checkpoint, so it also runs the PASSIVE checkpoint every
``AUTOCHECKPOINT_PAGES`` as SQLite would have, except within that distance of the size limit,
where it only held the checkpoint lock the RESTART was about to need.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import apsw

from ._files import size_or_zero
from ._models import CheckpointResult

__all__ = ["AUTOCHECKPOINT_PAGES", "CheckpointSchedule", "Checkpointer", "run_checkpoint"]

log = logging.getLogger("sessionstore")

AUTOCHECKPOINT_PAGES = 1000  # SQLite's default auto-checkpoint threshold


class CheckpointSchedule:
    """Decides when a TRUNCATE checkpoint is due. Pure: the clock is passed in.

    Due when ``interval_s`` has passed since the last success, or when a commit leaves the WAL
    above ``wal_bytes_limit``. After a busy result every trigger waits out a backoff (10 ms,
    20 ms, ... capped at ``max_backoff_s``) so a reader that pins the WAL is not hammered and
    commits do not each pay for a checkpoint that cannot finish. The first steps are short
    because the usual busy is another process's checkpoint running at the same moment, which
    frees the lock within milliseconds.
    """

    def __init__(
        self,
        interval_s: float,
        wal_bytes_limit: int,
        now: float,
        *,
        retry_base_s: float = 0.01,
        max_backoff_s: float = 1.0,
    ) -> None:
        self.interval_s = interval_s
        self.wal_bytes_limit = wal_bytes_limit
        self.retry_base_s = retry_base_s
        self.max_backoff_s = max_backoff_s
        self.next_due = now + interval_s
        self.retry_at = now
        self.busy_streak = 0

    def due_for_size(self, wal_bytes: int, now: float) -> bool:
        """True when a commit that left ``wal_bytes`` in the WAL should checkpoint now."""
        return wal_bytes > self.wal_bytes_limit and now >= self.retry_at

    def due(self, now: float) -> bool:
        """True when the interval (or a busy backoff) has run out at ``now``."""
        return now >= self.next_due

    def seconds_until_due(self, now: float) -> float:
        """How long the thread may sleep before the next check."""
        return max(0.0, self.next_due - now)

    def record(self, now: float, ok: bool, *, collided: bool = False) -> None:
        """Record a checkpoint's outcome at ``now``.

        ``collided``: it was busy at once because another process was checkpointing, which
        says nothing about readers pinning the WAL; the next try comes soon and the backoff
        does not grow.
        """
        if collided and not ok:
            self.retry_at = now + self.retry_base_s
            return
        if ok:
            self.busy_streak = 0
            self.next_due = now + self.interval_s
            self.retry_at = now
        else:
            self.busy_streak += 1
            backoff = min(self.retry_base_s * 2 ** (self.busy_streak - 1), self.max_backoff_s)
            self.retry_at = now + backoff
            self.next_due = now + min(backoff, self.interval_s)


_MODES = {
    "PASSIVE": apsw.SQLITE_CHECKPOINT_PASSIVE,
    "RESTART": apsw.SQLITE_CHECKPOINT_RESTART,
    "TRUNCATE": apsw.SQLITE_CHECKPOINT_TRUNCATE,
}


def run_checkpoint(conn: apsw.Connection, mode: str, wal_path: str) -> CheckpointResult:
    """Checkpoint ``conn``'s database now; the caller holds the connection and set its busy wait.

    Args:
        conn: a connection with no open transaction.
        mode: ``"PASSIVE"``, ``"RESTART"`` or ``"TRUNCATE"``.
        wal_path: the ``-wal`` file, for its size before and after.

    Returns:
        The result; ``ok`` False when the checkpoint was busy (readers, a writer, or another
        process's checkpoint) and should be tried later. It never raises for BUSY.
    """
    started = time.monotonic()
    before = size_or_zero(wal_path)
    apsw_mode = _MODES[mode]
    error = None
    try:
        log_frames, done = conn.wal_checkpoint(mode=apsw_mode)
        ok = True
    except apsw.BusyError as err:
        code = getattr(err, "extendedresult", apsw.SQLITE_BUSY)
        ok, log_frames, done, error = False, -1, -1, f"busy ({code})"
    return CheckpointResult(
        at=time.time(),
        mode=mode,
        ok=ok,
        log_frames=log_frames,
        checkpointed_frames=done,
        wal_bytes_before=before,
        wal_bytes_after=size_or_zero(wal_path),
        duration_s=time.monotonic() - started,
        error=error,
    )


class Checkpointer:
    """A daemon thread that wakes when a checkpoint is due and asks the store to run it.

    ``run`` is the store's callback that takes the writer lock and checkpoints; it returns the
    result, or None when the store is closing (the thread then ends).
    """

    def __init__(
        self,
        schedule: CheckpointSchedule,
        run: Callable[[], CheckpointResult | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "sessionstore-checkpointer",
    ) -> None:
        self.schedule = schedule
        self._run = run
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ran = threading.Condition(self._lock)
        self.runs = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def due_for_size(self, wal_bytes: int) -> bool:
        """Called after each commit: True when the committer should checkpoint right now."""
        with self._lock:
            return self.schedule.due_for_size(wal_bytes, self._clock())

    def record(self, ok: bool, *, collided: bool = False) -> None:
        """Record the outcome of a checkpoint run outside the thread (by a committer)."""
        with self._lock:
            self.schedule.record(self._clock(), ok=ok, collided=collided)

    def wait_for_runs(self, n: int, timeout: float) -> bool:
        """Block until the thread has run ``n`` checkpoints (True) or ``timeout`` passed (False)."""
        with self._ran:
            return self._ran.wait_for(lambda: self.runs >= n, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait for it (at most ``timeout``)."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                wait = self.schedule.seconds_until_due(self._clock())
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop:
                return
            with self._lock:
                due = self.schedule.due(self._clock())
            if not due:
                continue
            try:
                result = self._run()
            except Exception:  # the thread must outlive any one failure; the store reports it
                log.exception("checkpoint failed")
                result = None
                with self._lock:
                    self.schedule.record(self._clock(), ok=False)
                continue
            if result is None:
                return
            with self._lock:
                self.schedule.record(self._clock(), ok=result.ok)
                self.runs += 1
                self._ran.notify_all()
