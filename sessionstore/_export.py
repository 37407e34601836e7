"""What an export carries beyond the first format: keys, keyed checkpoints, writes, tombstones.

The first export format (version 1) held a session, its named checkpoints, events and child
rows. A framework's thread holds more: the session's caller key, checkpoints keyed by
(namespace, checkpoint id) with a parent, metadata, a binary payload and a run, the pending
writes attached to them, and the tombstones of what was deleted from it. This module reads
those from a store and turns them back into ops, so an import is still op-based (idempotent,
journaled when the target is closed) and keyed exactly as in the source.

Binary payloads travel as base64 text (JSON has no bytes). A deletion travels as its
tombstone and is imported as the deleting op at its original time, applied after every row of
the document: it then deletes in the target only what it deleted in the source (rows written
before it), and an older op applied late meets it there too. Checkpoint tombstones are
exported for the record but have no op of their own to recreate them; a run's tombstone is not
tied to one session and is not exported.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import apsw
from pydantic import BaseModel, ConfigDict

from ._ops import DeleteSession, Op, PutCheckpoint, PutWrites, checkpoint_row_id, dump_json

T = TypeVar("T")


class SessionStore(Protocol):
    """What an export reads through (typed here, not imported: no import cycle)."""

    def _run_read(self, fn: Callable[[apsw.Connection], T], borrower: str) -> T: ...


__all__ = [
    "ExportExtras",
    "KeyedCheckpoint",
    "PendingWrite",
    "Tombstone",
    "extras_ops",
    "not_stored",
    "read_extras",
]


class KeyedCheckpoint(BaseModel):
    """A checkpoint keyed by (namespace, checkpoint id), as exported."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    namespace: str
    checkpoint_id: str
    parent_id: str | None = None
    name: str
    run_id: str | None = None
    metadata: dict[str, Any]
    blob: str | None = None  # base64
    data: Any = None
    created_at: float
    written_at: float


class PendingWrite(BaseModel):
    """One write attached to a keyed checkpoint, as exported."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    namespace: str
    checkpoint_id: str
    task_id: str
    idx: int
    channel: str
    type: str | None = None
    blob: str | None = None  # base64
    task_path: str = ""
    written_at: float


class Tombstone(BaseModel):
    """A deletion: of the session itself, or of one of its checkpoints (``key``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    scope: str  # "session" or "checkpoint"
    key: str
    deleted_at: float


class ExportExtras(BaseModel):
    """The part of an export document added in version 2."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    app_key: str | None = None
    keyed_checkpoints: list[KeyedCheckpoint] = []
    writes: list[PendingWrite] = []
    tombstones: list[Tombstone] = []


def _b64(blob: bytes | None) -> str | None:
    return None if blob is None else base64.b64encode(blob).decode("ascii")


def read_extras(store: SessionStore, session_id: str) -> tuple[ExportExtras, set[str]]:
    """Read what version 2 adds for one session.

    Returns:
        The extras, and the row ids of the keyed checkpoints (the named-checkpoint list of the
        first format must leave them out, or an import would make them twice).

    Raises:
        StoreClosedError: the store is closing or closed.
    """

    def read(conn: apsw.Connection) -> tuple[ExportExtras, set[str]]:
        key_rows = conn.execute("SELECT app_key FROM sessions WHERE id = ?", (session_id,))
        app_key = next((str(r[0]) for r in key_rows if r[0] is not None), None)
        keyed: list[KeyedCheckpoint] = []
        row_ids: set[str] = set()
        cp_rows: list[Any] = conn.execute(
            "SELECT id, namespace, checkpoint_id, parent_id, name, run_id, metadata, blob, "
            "data, created_at, coalesce(written_at, created_at) FROM checkpoints "
            "WHERE session_id = ? ORDER BY checkpoint_id",
            (session_id,),
        ).fetchall()
        w_rows: list[Any] = conn.execute(
            "SELECT namespace, checkpoint_id, task_id, idx, channel, type, blob, task_path, "
            "written_at FROM checkpoint_writes WHERE session_id = ? "
            "ORDER BY namespace, checkpoint_id, task_id, idx",
            (session_id,),
        ).fetchall()
        prefix = dump_json([session_id])[:-1] + ","  # checkpoint keys: [session, ns, id]
        t_rows: list[Any] = conn.execute(
            "SELECT scope, key, deleted_at FROM tombstones WHERE (scope = 'session' AND "
            "key = ?) OR (scope = 'checkpoint' AND substr(key, 1, ?) = ?) ORDER BY scope, key",
            (session_id, len(prefix), prefix),
        ).fetchall()
        for r in cp_rows:
            row_id, ns, cid = str(r[0]), str(r[1]), str(r[2])
            if row_id != checkpoint_row_id(session_id, ns, cid):
                continue  # a named checkpoint (save_checkpoint): the first format has it
            row_ids.add(row_id)
            keyed.append(
                KeyedCheckpoint(
                    namespace=ns,
                    checkpoint_id=cid,
                    parent_id=r[3],
                    name=str(r[4]),
                    run_id=r[5],
                    metadata=json.loads(r[6]),
                    blob=_b64(r[7]),
                    data=json.loads(r[8]),
                    created_at=float(r[9]),
                    written_at=float(r[10]),
                )
            )
        writes = [
            PendingWrite(
                namespace=str(r[0]),
                checkpoint_id=str(r[1]),
                task_id=str(r[2]),
                idx=int(r[3]),
                channel=str(r[4]),
                type=r[5],
                blob=_b64(r[6]),
                task_path=str(r[7]),
                written_at=float(r[8]),
            )
            for r in w_rows
        ]
        tombstones = [
            Tombstone(scope=str(r[0]), key=str(r[1]), deleted_at=float(r[2])) for r in t_rows
        ]
        extras = ExportExtras(
            app_key=app_key, keyed_checkpoints=keyed, writes=writes, tombstones=tombstones
        )
        return extras, row_ids

    return store._run_read(read, "export")


def extras_ops(
    session_id: str, extras: ExportExtras, have: ExportExtras
) -> tuple[list[Op], list[Op], dict[str, Any]]:
    """The ops that bring ``extras`` into a target that already holds ``have``.

    Returns:
        ``(row ops, deletion ops, counts)``: the row ops go after the session's creation,
        the deletion ops after every other op of the import.

    Raises:
        ValueError: a row the op types refuse.
    """
    have_cp = {(c.namespace, c.checkpoint_id) for c in have.keyed_checkpoints}
    new_cp = [c for c in extras.keyed_checkpoints if (c.namespace, c.checkpoint_id) not in have_cp]
    rows: list[Op] = [
        PutCheckpoint(
            ts=c.written_at,
            session_id=session_id,
            namespace=c.namespace,
            checkpoint_id=c.checkpoint_id,
            parent_id=c.parent_id,
            name=c.name,
            run_id=c.run_id,
            metadata=c.metadata,
            blob=c.blob,
            data=c.data,
        )
        for c in new_cp
    ]
    have_w = {(w.namespace, w.checkpoint_id, w.task_id, w.idx) for w in have.writes}
    new_w = [
        w for w in extras.writes if (w.namespace, w.checkpoint_id, w.task_id, w.idx) not in have_w
    ]
    groups: dict[tuple[str, str, str, str, float], list[PendingWrite]] = {}
    for w in new_w:
        groups.setdefault((w.namespace, w.checkpoint_id, w.task_id, w.task_path, w.written_at), [])
        groups[(w.namespace, w.checkpoint_id, w.task_id, w.task_path, w.written_at)].append(w)
    rows.extend(
        PutWrites(
            ts=ts,
            session_id=session_id,
            namespace=ns,
            checkpoint_id=cid,
            task_id=task,
            task_path=path,
            writes=[
                {"idx": w.idx, "channel": w.channel, "type": w.type, "blob": w.blob} for w in ws
            ],
        )
        for (ns, cid, task, path, ts), ws in groups.items()
    )
    have_t = {(t.scope, t.key) for t in have.tombstones}
    deletions: list[Op] = [
        DeleteSession(ts=t.deleted_at, session_id=session_id)
        for t in extras.tombstones
        if t.scope == "session" and t.key == session_id and (t.scope, t.key) not in have_t
    ]
    counts = {
        "keyed_checkpoints": {"in_file": len(extras.keyed_checkpoints), "added": len(new_cp)},
        "writes": {"in_file": len(extras.writes), "added": len(new_w)},
        "tombstones": {"in_file": len(extras.tombstones), "applied": len(deletions)},
    }
    return rows, deletions, counts


def not_stored(store: SessionStore, session_id: str, ops: Sequence[Op]) -> list[tuple[str, str]]:
    """Keyed checkpoints put by ``ops`` that the session does not hold afterwards."""
    want = {(op.namespace, op.checkpoint_id) for op in ops if isinstance(op, PutCheckpoint)}
    if not want:
        return []
    have = {
        (c.namespace, c.checkpoint_id) for c in read_extras(store, session_id)[0].keyed_checkpoints
    }
    return [("keyed checkpoint", f"{ns}/{cid}") for ns, cid in sorted(want - have)]
