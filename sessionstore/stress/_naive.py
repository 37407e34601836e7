"""A deliberately naive session store: the code sessionstore exists to replace.

It is what the stress harness's ``--baseline naive`` runs, so users can see the failures of the
usual hand-written approach under the same exit storm. Every flaw below is one from DESIGN.md,
written the way it is commonly written, not a caricature:

* one apsw connection with **no busy timeout** (SQLite's default is 0): a second writer gets
  ``SQLITE_BUSY`` at once;
* **DEFERRED transactions that read, then write**, batched like Python's ``sqlite3`` module
  does by default (an implicit ``BEGIN``, a ``COMMIT`` every few writes): the upgrade from read
  to write fails with ``BUSY``/``BUSY_SNAPSHOT`` without the busy handler ever running;
* events are written **best-effort**, the way a log-to-database helper usually is: a BUSY is
  reported on stderr and swallowed, so the caller was told the event was saved and it is
  **lost**;
* the final status write **retries the statement, not the transaction**: on a stale snapshot
  that retry can never succeed, and the process **hangs** until something kills it;
* ``close()`` does not commit (again like ``sqlite3``), and the owner closes the database
  **before** cleaning up its children, whose bookkeeping then fails on a closed connection.

Never use this for anything but the baseline.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

__all__ = ["NaiveStore"]

T = TypeVar("T")

# The typical hand-written retry: a fixed sleep between attempts.
_RETRY_SLEEP_S = 0.01


class NaiveStore:
    """Sessions in the sessionstore schema, written the naive way (see the module docstring).

    Args:
        path: an existing sessionstore database (the harness creates the schema first).
        batch: writes per implicit transaction before the naive store commits.
    """

    def __init__(self, path: str, *, batch: int = 20) -> None:
        # No busy timeout and no busy handler: exactly what a plain connect() gives you.
        self.conn = apsw.Connection(path)
        self.batch = batch
        self._uncommitted = 0
        self.retry_until_done(lambda: self.conn.execute("PRAGMA journal_mode=WAL").fetchall())

    # ----------------------------------------------------------------------------- helpers

    def retry_until_done(self, fn: Callable[[], T]) -> T:
        """Retry ``fn`` on BUSY with a fixed sleep, forever (the loop that hangs shells).

        Only safe outside a transaction; inside a stale read transaction it never returns.
        """
        while True:
            try:
                return fn()
            except apsw.BusyError:
                time.sleep(_RETRY_SLEEP_S)

    def _in_batch(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the current implicit DEFERRED transaction; commit every ``batch`` calls.

        Raises:
            apsw.BusyError: another process holds the write lock, or our read snapshot went
                stale; the transaction was rolled back (it held no write yet: once a batch
                has the write lock it keeps it until COMMIT, starving everyone else).
        """
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")  # DEFERRED: the first write must upgrade the lock
        try:
            fn()
            self._uncommitted += 1
            if self._uncommitted >= self.batch:
                self.conn.execute("COMMIT")
                self._uncommitted = 0
        except apsw.BusyError:
            self.conn.execute("ROLLBACK")
            self._uncommitted = 0
            raise

    # ----------------------------------------------------------------------------- writes

    def create_session(self, name: str, metadata: dict[str, Any]) -> str:
        """Insert an ACTIVE session in autocommit mode, retrying BUSY; return its id."""
        sid = uuid.uuid4().hex
        now = time.time()
        self.retry_until_done(
            lambda: self.conn.execute(
                "INSERT INTO sessions (id, name, status, metadata, owner_pid, created_at, "
                "updated_at, status_at) VALUES (?, ?, 'active', ?, ?, ?, ?, ?)",
                (sid, name, json.dumps(metadata), os.getpid(), now, now, now),
            )
        )
        return sid

    def add_child(self, session_id: str, pid: int, argv: list[str]) -> None:
        """Record a child by PID alone (no identity), in autocommit mode, retrying BUSY."""
        self.retry_until_done(
            lambda: self.conn.execute(
                "INSERT INTO child_processes (session_id, pid, start_ticks, boot_id, argv, "
                "registered_at) VALUES (?, ?, 0, '', ?, ?)",
                (session_id, pid, json.dumps(argv), time.time()),
            )
        )

    def log_event(self, session_id: str, message: str, data: Any = None) -> str:
        """Append an event numbered from a read of the current count; return its op id.

        Best-effort: on BUSY the event is dropped with a line on stderr, and the op id is
        returned all the same (a lost acknowledged write).
        """
        op_id = uuid.uuid4().hex

        def write() -> None:
            seq = self.conn.execute(
                "SELECT count(*) FROM events WHERE session_id = ?", (session_id,)
            ).fetchall()[0][0]
            self.conn.execute(
                "INSERT INTO events (op_id, session_id, level, message, data, created_at) "
                "VALUES (?, ?, 'info', ?, ?, ?)",
                (op_id, session_id, message, json.dumps({"seq": seq, "data": data}), time.time()),
            )

        try:
            self._in_batch(write)
        except apsw.BusyError as err:
            print(f"event not saved: BusyError: {err}", file=sys.stderr, flush=True)
        return op_id

    def heartbeat(self, session_id: str) -> None:
        """Update the session's heartbeat time.

        Raises:
            apsw.BusyError: another process holds the write lock.
        """
        self._in_batch(
            lambda: self.conn.execute(
                "UPDATE sessions SET heartbeat_at = ? WHERE id = ?", (time.time(), session_id)
            )
        )

    def save_checkpoint(self, session_id: str, name: str, data: Any) -> str:
        """Read the latest checkpoint, then save a new one; return its id.

        Raises:
            apsw.BusyError: another process holds the write lock.
        """
        ckpt_id = uuid.uuid4().hex

        def write() -> None:
            self.conn.execute(
                "SELECT data FROM checkpoints WHERE session_id = ? "
                "ORDER BY created_at DESC LIMIT 1",
                (session_id,),
            ).fetchall()
            self.conn.execute(
                "INSERT INTO checkpoints (id, session_id, name, data, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (ckpt_id, session_id, name, json.dumps(data), time.time()),
            )

        self._in_batch(write)
        return ckpt_id

    def set_status(self, session_id: str, status: str) -> None:
        """Read the status, then write the new one, retrying the *statement* on BUSY.

        This is the hang: once another process commits after our read, our snapshot is stale
        and every retry of the UPDATE gets ``BUSY_SNAPSHOT``; only a ROLLBACK could cure it.
        """
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
        self.conn.execute("SELECT status FROM sessions WHERE id = ?", (session_id,)).fetchall()
        self.retry_until_done(
            lambda: self.conn.execute(
                "UPDATE sessions SET status = ?, status_at = ?, updated_at = ? WHERE id = ?",
                (status, time.time(), time.time(), session_id),
            )
        )
        self.conn.execute("COMMIT")
        self._uncommitted = 0

    def remove_child(self, session_id: str, pid: int) -> None:
        """Mark a child exited (raises ``apsw.ConnectionClosedError`` once closed)."""
        self.conn.execute(
            "UPDATE child_processes SET state = 'exited', exited_at = ? "
            "WHERE session_id = ? AND pid = ?",
            (time.time(), session_id, pid),
        )

    def close(self) -> None:
        """Close the connection without committing: an open batch is rolled back."""
        self.conn.close(True)
