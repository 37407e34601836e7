"""Read statements for keyed sessions, keyed checkpoints and their writes.

Every query an adapter for an agent framework needs, so that no adapter writes SQL against
the schema. Ordering is by checkpoint id, newest first: ids the store makes sort by creation
(uuid7-style), and a caller choosing its own ids chooses their order (LangGraph's uuid6 ids
sort by creation too). Rejected alternative: ordering by ``created_at``, which ties within a
clock tick and which a copied thread keeps from its source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import apsw

from ._models import Checkpoint, CheckpointWrite
from ._ops import encode_json

__all__ = ["MAX_PAGE", "find_checkpoints", "get_writes", "metadata_filter"]

_COLUMNS = (
    "checkpoint_id, session_id, name, data, created_at, namespace, parent_id, "
    "metadata, blob, run_id"
)
MAX_PAGE = 100_000


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
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


def metadata_filter(metadata: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL and bindings matching checkpoints whose metadata has each key equal to its value.

    Values compare as JSON (``{"step": 1}`` matches 1, not "1"); a None value matches a key
    that is null or absent.

    Raises:
        ValueError: a key that is not a non-empty str without ``"``, or a value that is not JSON.
    """
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
    conn: apsw.Connection,
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
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM checkpoints {clause}"
        "ORDER BY checkpoint_id DESC, session_id, namespace LIMIT ?",
        (*params, -1 if limit is None else limit),
    ).fetchall()
    if corrupt is None:
        return [_checkpoint(r) for r in rows]
    found: list[Checkpoint] = []
    for r in rows:
        try:
            found.append(_checkpoint(r))
        except ValueError as err:  # json.JSONDecodeError, a UnicodeDecodeError
            corrupt.append((str(r[0]), f"{type(err).__name__}: {err}"))
    return found


def get_writes(
    conn: apsw.Connection, session_id: str, namespace: str, checkpoint_id: str
) -> list[CheckpointWrite]:
    """A checkpoint's writes, by task id then idx."""
    rows: list[Any] = conn.execute(
        "SELECT task_id, idx, channel, type, blob, task_path FROM checkpoint_writes "
        "WHERE session_id = ? AND namespace = ? AND checkpoint_id = ? ORDER BY task_id, idx",
        (session_id, namespace, checkpoint_id),
    ).fetchall()
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
