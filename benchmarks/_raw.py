"""Raw apsw doing exactly the store's durable work: its SQL, on its schema, with its settings.

The baseline every store figure is divided by. It must cost what SQLite costs for the same
rows and nothing more, or the ratio flatters the store; and it must do all of that work, or
the ratio wrongs it. So it runs the statements the store runs for each op (a tombstone look-up,
then the INSERT ... RETURNING, for an event), in ``BEGIN IMMEDIATE`` ... ``COMMIT`` through
apsw's ``with conn:``, on a file the store created, with the store's pragmas and busy handler.
``check_same_work`` proves it each run: it traces the statements both sides send to SQLite
for one op and compares the pragmas of both connections (a benchmark that silently drifted
from the store's SQL would measure something else).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import apsw

from sessionstore import SessionStore
from sessionstore._connection import fair_busy_handler

TOMBSTONE_SQL = "SELECT deleted_at FROM tombstones WHERE scope = ? AND key = ?"
EVENT_SQL = (
    "INSERT INTO events (op_id, session_id, level, message, data, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(op_id) DO NOTHING RETURNING id"
)
HEARTBEAT_SQL = (
    "UPDATE sessions SET heartbeat_at = max(coalesce(heartbeat_at, 0), ?), "
    "updated_at = max(updated_at, ?) WHERE id = ?"
)
# The settings both sides must share (compared on the live connections by check_same_work).
PRAGMAS = ("journal_mode", "synchronous", "foreign_keys", "journal_size_limit")


def connect(db: str, *, busy: str = "fair", synchronous: str = "NORMAL") -> apsw.Connection:
    """A connection set up as the store sets up its writer (pragmas, busy handler, IMMEDIATE)."""
    conn = apsw.Connection(db)
    if busy == "fair":
        # The store's own lock hand-off policy (a private helper: follow its signature).
        conn.set_busy_handler(fair_busy_handler(lambda: 5000.0))
    else:
        conn.set_busy_timeout(5000)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", synchronous)
    conn.pragma("foreign_keys", "ON")
    conn.pragma("journal_size_limit", 4 * 1024 * 1024)
    conn.transaction_mode = "IMMEDIATE"
    return conn


def log_event(conn: apsw.Connection, sid: str, i: int) -> int:
    """One event, as ``store.log_event(sid, "step finished", data={"step": i})`` writes it."""
    data = json.dumps({"step": i}, separators=(",", ":"))
    with conn:
        conn.execute(TOMBSTONE_SQL, ("session", sid)).fetchall()
        rows = conn.execute(
            EVENT_SQL, (os.urandom(16).hex(), sid, "info", "step finished", data, time.time())
        ).fetchall()
    return int(rows[0][0])  # type: ignore[arg-type]


def heartbeat(conn: apsw.Connection, sid: str, _i: int) -> None:
    """One heartbeat, as ``store.heartbeat(sid)`` writes it."""
    now = time.time()
    with conn:
        conn.execute(HEARTBEAT_SQL, (now, now, sid)).fetchall()
        if conn.changes() == 0:
            raise LookupError(sid)


RAW_OPS: dict[str, Callable[[apsw.Connection, str, int], Any]] = {
    "log_event": log_event,
    "heartbeat": heartbeat,
}


def store_op(store: SessionStore, op: str) -> Callable[[str, int], Any]:
    """The store's side of ``op``: a call with the same arguments as the raw one."""
    if op == "log_event":
        return lambda sid, i: store.log_event(sid, "step finished", data={"step": i})
    if op == "heartbeat":
        return lambda sid, _i: store.heartbeat(sid)
    raise ValueError(op)


def _trace(conn: apsw.Connection, sink: list[str]) -> None:
    conn.trace_v2(apsw.SQLITE_TRACE_STMT, lambda event: sink.append(event["sql"]))


def check_same_work(
    store: SessionStore, store_sid: str, raw: apsw.Connection, raw_sid: str
) -> None:
    """Fail unless raw sends SQLite the very statements the store does, with the same pragmas.

    Raises:
        AssertionError: the statements of one op or a pragma differ.
    """
    writers = [c for c in apsw.connections() if c.filename == store.path]
    assert writers, "the store has no open connection"
    for op, raw_fn in RAW_OPS.items():
        store_sql: list[str] = []
        raw_sql: list[str] = []
        for c in writers:
            _trace(c, store_sql)
        _trace(raw, raw_sql)
        try:
            store_op(store, op)(store_sid, 0)
            raw_fn(raw, raw_sid, 0)
        finally:
            for c in [*writers, raw]:
                c.trace_v2(0, None)
        assert store_sql == raw_sql, f"{op}: store ran {store_sql}, raw ran {raw_sql}"
    for name in PRAGMAS:
        mine = raw.pragma(name)
        theirs = {str(c.pragma(name)) for c in writers}
        assert theirs == {str(mine)}, f"pragma {name}: store {theirs}, raw {mine}"
