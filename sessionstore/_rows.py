"""Rows to models: the column lists the store selects and their conversion."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._identity import ProcessIdentity
from ._models import Checkpoint, ChildProcess, ChildState, Event, Session, SessionStatus

__all__ = [
    "CHECKPOINT_COLUMNS",
    "CHILD_COLUMNS",
    "EVENT_COLUMNS",
    "SESSION_COLUMNS",
    "checkpoint_from_row",
    "child_from_row",
    "event_from_row",
    "session_from_row",
]

SESSION_COLUMNS = (
    "id, name, objective, status, metadata, owner_pid, owner_start_ticks, owner_boot_id, "
    "owner_host, created_at, updated_at, paused_at, resumed_at, stopped_at, heartbeat_at, app_key"
)
CHILD_COLUMNS = (
    "session_id, pid, start_ticks, boot_id, pgid, argv, registered_at, exited_at, exit_code, state"
)
EVENT_COLUMNS = "id, op_id, session_id, level, message, data, created_at"
CHECKPOINT_COLUMNS = "id, session_id, name, data, created_at"


def session_from_row(row: Sequence[Any]) -> Session:
    """A Session from a row of ``SESSION_COLUMNS``."""
    owner = None
    if row[5] is not None and row[6] is not None and row[7]:
        owner = ProcessIdentity(pid=row[5], start_ticks=row[6], boot_id=row[7])
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
