"""The read statements of the ``status`` screen: plain values, no model, no pydantic.

``status`` runs in shell hooks at exit storms, where start-up time is the cost: importing
pydantic and building the model classes was three quarters of it. So these statements answer
with plain values, and the modules they need (this one, ``_peek``, ``_connection``) import no
model. ``_queries`` re-exports them: every read of the package is still found there.
Rejected alternative: ``status`` reading through a read-only store, which builds a ``Session``
per active session to compute what one ``WHERE`` clause selects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = [
    "Source",
    "newest_checkpoint",
    "owner_fields",
    "rows",
    "schema_version",
    "stale_sessions",
    "status_counts",
]


class Source(Protocol):
    """Where a statement runs: an ``apsw.Connection``, a ``ReadLease`` or a ``Peek``."""

    def execute(self, statements: str, bindings: Sequence[Any] | None = None, /) -> Iterable[Any]:
        """Run one statement; iterate its rows."""


def rows(src: Source, sql: str, bindings: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Every row of one statement, as tuples."""
    return [tuple(r) for r in src.execute(sql, bindings)]


def owner_fields(pid: Any, start_ticks: Any, boot_id: Any) -> dict[str, Any] | None:
    """A session's owner from its three columns (a ``ProcessIdentity``'s fields), or None.

    A session without an owner, or one recorded without a boot id, has none: its owner can
    never be verified, so it is never reported as one.
    """
    if pid is None or start_ticks is None or not boot_id:
        return None
    return {"pid": int(pid), "start_ticks": int(start_ticks), "boot_id": str(boot_id)}


def status_counts(src: Source) -> dict[str, int]:
    """The number of sessions in each status that has any."""
    found = rows(src, "SELECT status, count(*) FROM sessions GROUP BY status")
    return {str(status): int(n) for status, n in found}


def stale_sessions(src: Source, before: float) -> list[tuple[Any, ...]]:
    """Active sessions whose last heartbeat (or creation, never having sent one) is older.

    Returns:
        Rows ``(id, name, heartbeat_at, created_at, owner_pid, owner_start_ticks,
        owner_boot_id, owner_host)`` by id.
    """
    return rows(
        src,
        "SELECT id, name, heartbeat_at, created_at, owner_pid, owner_start_ticks, owner_boot_id, "
        "owner_host FROM sessions "
        "WHERE status = 'active' AND coalesce(heartbeat_at, created_at) < ? ORDER BY id",
        (before,),
    )


def newest_checkpoint(src: Source) -> dict[str, Any] | None:
    """The most recent checkpoint of the whole store, its data left out, or None.

    Returns:
        ``{"id", "session_id", "name", "created_at"}``, or None when there is none.
    """
    found = rows(
        src,
        "SELECT id, session_id, name, created_at FROM checkpoints "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    if not found:
        return None
    cid, sid, name, created_at = found[0]
    return {"id": cid, "session_id": sid, "name": name, "created_at": created_at}


def schema_version(src: Source) -> int:
    """The schema version the file is at (``PRAGMA user_version``)."""
    return int(rows(src, "PRAGMA user_version")[0][0])
