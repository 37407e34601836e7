"""The SQL of pruning ended sessions (the :class:`~sessionstore._ops.PruneSessions` op).

Its own module, importing nothing of the package, so that ``_ops`` (which applies the op) and
``_maintenance`` (which makes it) both use it without an import cycle.
"""

from __future__ import annotations

import apsw

__all__ = ["prune_rows"]

_ENDED = ("stopped", "completed", "crashed")


def prune_rows(
    conn: apsw.Connection, before: float, limit: int, tombstones_before: float | None
) -> tuple[int, int]:
    """Delete up to ``limit`` sessions ended before ``before``, inside the caller's transaction.

    A session goes only when it ended and nothing in it (status, heartbeat, event, checkpoint,
    write, child) is newer than ``before``; it leaves a tombstone at ``before``. Tombstones
    older than ``tombstones_before`` (when given) are dropped.

    Returns:
        ``(sessions deleted, tombstones dropped)``.
    """
    b = before
    ids = [
        str(r[0])
        for r in conn.execute(
            "SELECT s.id FROM sessions s WHERE s.status IN (?, ?, ?) "
            "AND s.status_at < :b AND s.updated_at < :b AND s.created_at < :b "
            "AND coalesce(s.heartbeat_at, 0) < :b "
            "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.session_id = s.id "
            "  AND e.created_at >= :b) "
            "AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.session_id = s.id "
            "  AND coalesce(c.written_at, c.created_at) >= :b) "
            "AND NOT EXISTS (SELECT 1 FROM checkpoint_writes w WHERE w.session_id = s.id "
            "  AND w.written_at >= :b) "
            # A child possibly still alive keeps its session: the reaper needs the row.
            "AND NOT EXISTS (SELECT 1 FROM child_processes p WHERE p.session_id = s.id "
            "  AND (p.state IN ('running', 'unkillable') OR p.registered_at >= :b "
            "       OR coalesce(p.exited_at, 0) >= :b)) "
            "ORDER BY s.id LIMIT :n".replace("?, ?, ?", ", ".join(f"'{s}'" for s in _ENDED)),
            {"b": b, "n": limit},
        ).fetchall()
    ]
    for sid in ids:
        for table in ("checkpoint_writes", "checkpoints", "events", "child_processes"):
            conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (sid,)).fetchall()
        conn.execute("DELETE FROM sessions WHERE id = ?", (sid,)).fetchall()
        # At the cutoff: an op made before it and applied late (a journal replayed after the
        # prune) finds the tombstone and does not resurrect the session.
        conn.execute(
            "INSERT INTO tombstones (scope, key, deleted_at) VALUES ('session', ?, ?) "
            "ON CONFLICT(scope, key) DO UPDATE SET "
            "deleted_at = max(deleted_at, excluded.deleted_at)",
            (sid, b),
        ).fetchall()
    dropped = 0
    if tombstones_before is not None:
        conn.execute("DELETE FROM tombstones WHERE deleted_at < ?", (tombstones_before,)).fetchall()
        dropped = conn.changes()
    return len(ids), dropped
