"""Every read statement of the package and its row → model mapping.

A schema change touches the op appliers (``_ops.py``), this module and ``_summaries`` (the
``status`` screen's statements, which import no model; re-exported here), nothing else: the
store's read methods, the CLI, the demo and the stress verifier all read through these
functions. Each takes a :class:`Source`: an apsw connection (the store's read methods, inside
its retry policy and read lease), a :class:`~sessionstore.ReadLease` (the tools, where every
statement is its own leased read) or a ``_peek.Peek`` (``status``). Rejected alternative:
store methods for every maintenance read (integrity checks, counts for the status screen),
which would grow the public surface with reads only the tools need.

The statements only read; writes and the reads a write needs inside its transaction stay with
the ops. Checkpoints keyed by the caller's id are ordered by that id, newest first: ids the
store makes sort by creation (uuid7-style), and a caller choosing its own ids chooses their
order (LangGraph's uuid6 ids sort by creation too). Rejected alternative: ordering those by
``created_at``, which ties within a clock tick and which a copied thread keeps from its source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._identity import ProcessIdentity
from ._models import (
    Checkpoint,
    CheckpointWrite,
    ChildProcess,
    ChildState,
    Event,
    Session,
    SessionStatus,
)
from ._summaries import (
    Source,
    newest_checkpoint,
    owner_fields,
    schema_version,
    stale_sessions,
    status_counts,
)
from ._summaries import rows as _rows

__all__ = [
    "CHECKPOINT_COLUMNS",
    "CHILD_COLUMNS",
    "EVENT_COLUMNS",
    "MAX_PAGE",
    "SESSION_COLUMNS",
    "Source",
    "all_children",
    "checkpoint_from_row",
    "checkpoint_ids",
    "checkpoint_writes",
    "child_from_row",
    "child_states",
    "children",
    "count_events",
    "event_from_row",
    "event_op_ids",
    "events",
    "find_checkpoints",
    "first_of_last_events",
    "foreign_key_violations",
    "get_session",
    "integrity_check",
    "list_checkpoints",
    "list_sessions",
    "metadata_filter",
    "newest_checkpoint",
    "pragmas",
    "schema_version",
    "session_from_row",
    "stale_sessions",
    "status_counts",
]


# --------------------------------------------------------------------------------- rows → models

SESSION_COLUMNS = (
    "id, name, objective, status, metadata, owner_pid, owner_start_ticks, owner_boot_id, "
    "owner_host, created_at, updated_at, paused_at, resumed_at, stopped_at, heartbeat_at, app_key"
)
CHILD_COLUMNS = (
    "session_id, pid, start_ticks, boot_id, pgid, argv, registered_at, exited_at, exit_code, state"
)
EVENT_COLUMNS = "id, op_id, session_id, level, message, data, created_at"
CHECKPOINT_COLUMNS = "id, session_id, name, data, created_at"
_KEYED_CHECKPOINT_COLUMNS = (
    "checkpoint_id, session_id, name, data, created_at, namespace, parent_id, "
    "metadata, blob, run_id"
)
MAX_PAGE = 100_000  # the largest ``limit`` of find_checkpoints


def session_from_row(row: Sequence[Any]) -> Session:
    """A Session from a row of ``SESSION_COLUMNS``."""
    fields = owner_fields(row[5], row[6], row[7])
    owner = None if fields is None else ProcessIdentity(**fields)
    return Session(
        id=row[0],
        name=row[1],
        objective=row[2],
        status=SessionStatus(row[3]),
        metadata=json.loads(row[4]),
        owner=owner,
        owner_host=row[8],
        created_at=row[9],
        updated_at=row[10],
        paused_at=row[11],
        resumed_at=row[12],
        stopped_at=row[13],
        heartbeat_at=row[14],
        key=row[15],
    )


def child_from_row(row: Sequence[Any]) -> ChildProcess:
    """A ChildProcess from a row of ``CHILD_COLUMNS``."""
    return ChildProcess(
        session_id=row[0],
        pid=row[1],
        start_ticks=row[2],
        boot_id=row[3],
        pgid=row[4],
        argv=json.loads(row[5]),
        registered_at=row[6],
        exited_at=row[7],
        exit_code=row[8],
        state=ChildState(row[9]),
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """An Event from a row of ``EVENT_COLUMNS``."""
    return Event(
        id=row[0],
        op_id=row[1],
        session_id=row[2],
        level=row[3],
        message=row[4],
        data=None if row[5] is None else json.loads(row[5]),
        created_at=row[6],
    )


def checkpoint_from_row(row: Sequence[Any]) -> Checkpoint:
    """A Checkpoint from a row of ``CHECKPOINT_COLUMNS``."""
    return Checkpoint(
        id=row[0], session_id=row[1], name=row[2], data=json.loads(row[3]), created_at=row[4]
    )


def _keyed_checkpoint(row: Sequence[Any]) -> Checkpoint:
    # model_construct: the row was written from a validated op.
    return Checkpoint.model_construct(
        id=row[0],
        session_id=row[1],
        name=row[2],
        data=json.loads(row[3]),
        created_at=row[4],
        namespace=row[5],
        parent_id=row[6],
        metadata=json.loads(row[7]),
        blob=row[8],
        run_id=row[9],
    )


# --------------------------------------------------------------------------------- sessions


def get_session(src: Source, session_id: str) -> Session | None:
    """One session, or None."""
    rows = _rows(src, f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))
    return session_from_row(rows[0]) if rows else None


def list_sessions(src: Source, status: SessionStatus | None) -> list[Session]:
    """Sessions oldest first, all or only those with ``status``."""
    if status is None:
        rows = _rows(src, f"SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, id")
    else:
        rows = _rows(
            src,
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status = ? ORDER BY created_at, id",
            (status.value,),
        )
    return [session_from_row(r) for r in rows]


# --------------------------------------------------------------------------------- checkpoints


def list_checkpoints(
    src: Source, session_id: str, *, name: str | None, limit: int | None, newest_first: bool
) -> list[Checkpoint]:
    """A session's checkpoints by creation time (oldest first unless ``newest_first``)."""
    order = "DESC" if newest_first else "ASC"
    where = "session_id = ?" + (" AND name = ?" if name is not None else "")
    params: tuple[Any, ...] = (session_id,) if name is None else (session_id, name)
    sql = (
        f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE {where} "
        f"ORDER BY created_at {order}, id {order} LIMIT ?"
    )
    return [
        checkpoint_from_row(r) for r in _rows(src, sql, (*params, -1 if limit is None else limit))
    ]


def checkpoint_ids(src: Source, session_id: str) -> set[str]:
    """The ids of every checkpoint of a session."""
    rows = _rows(src, "SELECT id FROM checkpoints WHERE session_id = ?", (session_id,))
    return {str(r[0]) for r in rows}


def metadata_filter(metadata: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL and bindings matching checkpoints whose metadata has each key equal to its value.

    Values compare as JSON (``{"step": 1}`` matches 1, not "1"); a None value matches a key
    that is null or absent.

    Raises:
        ValueError: a key that is not a non-empty str without ``"``, or a value that is not JSON.
    """
    # Imported here, not at the top: the read side sits below the ops, and importing _ops
    # before the fork gate would register its fork hook first (hooks run in import order,
    # see _lifecycle). The import is free after the first call.
    from ._ops import encode_json

    clauses: list[str] = []
    params: list[Any] = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or '"' in key or "\\" in key:
            raise ValueError(f"metadata filter key must be a plain non-empty str: {key!r}")
        text, _ = encode_json(value)
        clauses.append("json_quote(json_extract(metadata, ?)) IS json_quote(json_extract(?, '$'))")
        params.extend((f'$."{key}"', text))
    return " AND ".join(clauses), params


def find_checkpoints(
    src: Source,
    *,
    session_id: str | None,
    namespace: str | None,
    name: str | None,
    checkpoint_id: str | None,
    metadata: Mapping[str, Any] | None,
    run_id: str | None,
    before: str | None,
    limit: int | None,
    corrupt: list[tuple[str, str]] | None = None,
) -> list[Checkpoint]:
    """Checkpoints matching every given filter, newest (highest checkpoint id) first.

    With ``corrupt`` given, a row whose JSON cannot be read is left out and reported there as
    ``(checkpoint id, reason)``; without it, such a row raises ``ValueError``.

    Raises:
        ValueError: a bad metadata filter (see :func:`metadata_filter`), or an unreadable row
            when ``corrupt`` is None.
    """
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("session_id", session_id),
        ("namespace", namespace),
        ("name", name),
        ("checkpoint_id", checkpoint_id),
        ("run_id", run_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if before is not None:
        where.append("checkpoint_id < ?")
        params.append(before)
    if metadata:
        sql, more = metadata_filter(metadata)
        where.append(sql)
        params.extend(more)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = _rows(
        src,
        f"SELECT {_KEYED_CHECKPOINT_COLUMNS} FROM checkpoints {clause}"
        "ORDER BY checkpoint_id DESC, session_id, namespace LIMIT ?",
        (*params, -1 if limit is None else limit),
    )
    if corrupt is None:
        return [_keyed_checkpoint(r) for r in rows]
    found: list[Checkpoint] = []
    for r in rows:
        try:
            found.append(_keyed_checkpoint(r))
        except ValueError as err:  # json.JSONDecodeError, a UnicodeDecodeError
            corrupt.append((str(r[0]), f"{type(err).__name__}: {err}"))
    return found


def checkpoint_writes(
    src: Source, session_id: str, namespace: str, checkpoint_id: str
) -> list[CheckpointWrite]:
    """A checkpoint's writes, by task id then idx."""
    rows = _rows(
        src,
        "SELECT task_id, idx, channel, type, blob, task_path FROM checkpoint_writes "
        "WHERE session_id = ? AND namespace = ? AND checkpoint_id = ? ORDER BY task_id, idx",
        (session_id, namespace, checkpoint_id),
    )
    return [
        CheckpointWrite.model_construct(
            session_id=session_id,
            namespace=namespace,
            checkpoint_id=checkpoint_id,
            task_id=r[0],
            idx=r[1],
            channel=r[2],
            type=r[3],
            blob=r[4],
            task_path=r[5],
        )
        for r in rows
    ]


# --------------------------------------------------------------------------------- events


def events(src: Source, session_id: str, after_id: int | None, limit: int) -> list[Event]:
    """Up to ``limit`` events of a session with id > ``after_id``, oldest first."""
    rows = _rows(
        src,
        f"SELECT {EVENT_COLUMNS} FROM events WHERE session_id = ? AND id > ? ORDER BY id LIMIT ?",
        (session_id, after_id or 0, limit),
    )
    return [event_from_row(r) for r in rows]


def first_of_last_events(src: Source, session_id: str, count: int) -> int | None:
    """The id of the oldest of a session's ``count`` newest events, or None when it has none."""
    rows = _rows(
        src,
        "SELECT min(id) FROM (SELECT id FROM events WHERE session_id = ? ORDER BY id DESC LIMIT ?)",
        (session_id, count),
    )
    first = rows[0][0] if rows else None
    return None if first is None else int(first)


def count_events(src: Source, session_id: str) -> int:
    """How many events a session has."""
    return int(_rows(src, "SELECT count(*) FROM events WHERE session_id = ?", (session_id,))[0][0])


def event_op_ids(src: Source, session_id: str) -> set[str]:
    """The op ids of every event of a session."""
    rows = _rows(src, "SELECT op_id FROM events WHERE session_id = ?", (session_id,))
    return {str(r[0]) for r in rows}


# --------------------------------------------------------------------------------- children

# The states of a child that may still be running (the default of the children reads).
_LIVE_STATES = "('running', 'unkillable')"


def children(src: Source, session_id: str, *, include_exited: bool) -> list[ChildProcess]:
    """A session's recorded children, oldest first (only running/unkillable by default)."""
    where = "" if include_exited else f" AND state IN {_LIVE_STATES}"
    rows = _rows(
        src,
        f"SELECT {CHILD_COLUMNS} FROM child_processes WHERE session_id = ?{where} "
        "ORDER BY registered_at, pid",
        (session_id,),
    )
    return [child_from_row(r) for r in rows]


def all_children(src: Source, *, include_exited: bool) -> list[ChildProcess]:
    """Every session's recorded children, oldest first (only running/unkillable by default)."""
    where = "" if include_exited else f" WHERE state IN {_LIVE_STATES}"
    rows = _rows(
        src, f"SELECT {CHILD_COLUMNS} FROM child_processes{where} ORDER BY registered_at, pid"
    )
    return [child_from_row(r) for r in rows]


def child_states(src: Source, session_id: str) -> dict[tuple[int, int, str], ChildState]:
    """Each recorded child of a session by ``(pid, start_ticks, boot_id)``, with its state."""
    rows = _rows(
        src,
        "SELECT pid, start_ticks, boot_id, state FROM child_processes WHERE session_id = ?",
        (session_id,),
    )
    return {(int(r[0]), int(r[1]), str(r[2])): ChildState(r[3]) for r in rows}


# --------------------------------------------------------------------------------- maintenance


def integrity_check(src: Source) -> list[str]:
    """``PRAGMA integrity_check``: ``["ok"]``, or the problems it found."""
    return [str(r[0]) for r in _rows(src, "PRAGMA integrity_check")]


def foreign_key_violations(src: Source) -> int:
    """How many rows ``PRAGMA foreign_key_check`` reports."""
    return len(_rows(src, "PRAGMA foreign_key_check"))


_PRAGMAS = ("journal_mode", "page_size", "page_count", "freelist_count", "auto_vacuum")


def pragmas(src: Source) -> dict[str, Any]:
    """The file-level settings an operator checks, and the schema version (``user_version``)."""
    found: dict[str, Any] = {}
    for name in (*_PRAGMAS, "user_version"):
        # One statement per call: apsw runs a multi-statement string lazily.
        rows = _rows(src, f"PRAGMA {name}")
        found[name] = rows[0][0] if rows else None
    return found
