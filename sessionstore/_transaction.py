"""Several writes as one unit: ``with store.transaction() as tx: ...``.

The methods of :class:`Transaction` build ops exactly as the store's methods do (so bad input
is a ``ValueError`` at the call, and nothing is applied); leaving the ``with`` block without
an exception writes them all as one :class:`~sessionstore._ops.Batch` op: applied in one
``BEGIN IMMEDIATE`` transaction while the store is open, queued as one entry while it closes,
one journal line after it closed, replayed as one savepoint. An exception inside the block
discards every op of the transaction: nothing is applied, queued or journaled.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ._identity import ProcessIdentity, check_signal_target, read_process_info
from ._models import Checkpoint, Event, EventLevel, Session, SessionStatus
from ._ops import (
    AddChild,
    Batch,
    CopySession,
    CreateSession,
    DeleteRuns,
    DeleteSession,
    Heartbeat,
    LogEvent,
    Op,
    PopCheckpoint,
    PruneCheckpoints,
    PutCheckpoint,
    PutWrites,
    SaveCheckpoint,
    SetStatus,
    checkpoint_from_op,
    event_from_op,
    owner_fields,
    session_from_create,
    session_id_for_key,
)
from .errors import ProcessNotFoundError

__all__ = [
    "Transaction",
    "checkpoint_from_pop",
    "checkpoint_from_put",
    "make_add_child",
    "make_create",
    "make_keyed_create",
    "make_put_checkpoint",
    "make_put_writes",
]

WriteTuple = tuple[int, str, "str | None", "bytes | None"]


def _b64(blob: bytes | None) -> str | None:
    if blob is None:
        return None
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"blob must be bytes, not {type(blob).__name__}")
    return base64.b64encode(bytes(blob)).decode("ascii")


def make_create(name: str, objective: str | None, metadata: dict[str, Any] | None) -> CreateSession:
    """The op :meth:`SessionStore.create_session` writes."""
    return CreateSession(name=name, objective=objective, metadata=metadata or {}, **owner_fields())


def make_keyed_create(
    key: str, name: str | None, objective: str | None, metadata: dict[str, Any] | None
) -> CreateSession:
    """The op that creates the session of ``key`` (changes nothing if it exists)."""
    return CreateSession(
        session_id=session_id_for_key(key),
        key=key,
        name=key[:200] if name is None else name,
        objective=objective,
        metadata=metadata or {},
        **owner_fields(),
    )


def make_put_checkpoint(
    session_id: str,
    checkpoint_id: str,
    data: Any,
    *,
    namespace: str,
    parent_id: str | None,
    name: str,
    metadata: dict[str, Any] | None,
    blob: bytes | None,
    run_id: str | None,
) -> PutCheckpoint:
    """The op :meth:`SessionStore.put_checkpoint` writes."""
    return PutCheckpoint(
        session_id=session_id,
        checkpoint_id=checkpoint_id,
        data=data,
        namespace=namespace,
        parent_id=parent_id,
        name=name,
        metadata=metadata or {},
        blob=_b64(blob),
        run_id=run_id,
    )


def checkpoint_from_put(op: PutCheckpoint) -> Checkpoint:
    """The Checkpoint a PutCheckpoint op writes, without reading the database."""
    return Checkpoint(
        id=op.checkpoint_id,
        session_id=op.session_id,
        name=op.name,
        data=op.data,
        created_at=op.ts,
        namespace=op.namespace,
        parent_id=op.parent_id,
        metadata=op.metadata,
        blob=op.blob_bytes,
        run_id=op.run_id,
    )


def make_put_writes(
    session_id: str,
    checkpoint_id: str,
    task_id: str,
    writes: Iterable[WriteTuple],
    *,
    namespace: str,
    task_path: str,
    replace: bool,
) -> PutWrites:
    """The op :meth:`SessionStore.put_writes` writes."""
    entries = []
    for w in writes:
        idx, channel, type_, blob = w
        entries.append({"idx": idx, "channel": channel, "type": type_, "blob": _b64(blob)})
    return PutWrites(
        session_id=session_id,
        checkpoint_id=checkpoint_id,
        task_id=task_id,
        writes=entries,
        namespace=namespace,
        task_path=task_path,
        replace=replace,
    )


def make_add_child(
    session_id: str,
    pid: int,
    *,
    identity: ProcessIdentity | None,
    pgid: int | None,
    argv: list[str] | None,
) -> AddChild:
    """The op :meth:`SessionStore.add_child` writes; what is not given is read from the process.

    Raises:
        ValueError: pid not an int in 2..pid_max, our own pid, or ``identity.pid`` differs.
        ProcessNotFoundError: no process has that pid (nothing to identify).
    """
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise ValueError(f"pid must be an int, not {type(pid).__name__}")
    check_signal_target(pid)
    if identity is not None and identity.pid != pid:
        raise ValueError(f"identity is for pid {identity.pid}, not {pid}")
    if identity is None or pgid is None or argv is None:
        info = read_process_info(pid)
        if info is None:
            raise ProcessNotFoundError(pid)
        if identity is None:
            identity = ProcessIdentity.capture(pid)
        pgid = info.pgid if pgid is None else pgid
        argv = info.argv if argv is None else argv
    return AddChild(
        session_id=session_id,
        pid=pid,
        start_ticks=identity.start_ticks,
        boot_id=identity.boot_id,
        pgid=pgid,
        argv=argv,
    )


def checkpoint_from_pop(op: PopCheckpoint, result: Any) -> Checkpoint | None:
    """The Checkpoint a PopCheckpoint op removed (``result`` is what applying it returned).

    Returns:
        None when there was none, or the op was queued or journaled (not applied now).
    """
    if not isinstance(result, tuple):
        return None
    checkpoint_id, name, data = result
    return Checkpoint(
        id=checkpoint_id,
        session_id=op.session_id,
        name=name,
        data=json.loads(data),
        created_at=op.ts,
        namespace=op.namespace,
    )


class Transaction:
    """Ops collected inside ``with store.transaction() as tx``, written as one unit at the end.

    Each method validates at once (``ValueError`` for bad input; the transaction goes on
    without that op) and returns what the write will make, built from the op: an Event's
    ``id`` is None (it gets one when the batch is applied). Using a transaction after its
    block ended raises ``RuntimeError``.
    """

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._open = True

    def _add(self, op: Op) -> None:
        if not self._open:
            raise RuntimeError("this transaction's block has ended")
        self._ops.append(op)

    def _finish(self) -> Batch | None:
        self._open = False
        ops, self._ops = self._ops, []
        return Batch(ops=ops) if ops else None

    def create_session(
        self, name: str, objective: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Session:
        """As :meth:`SessionStore.create_session`."""
        op = make_create(name, objective, metadata)
        self._add(op)
        return session_from_create(op)

    def get_or_create_session_by_key(
        self,
        key: str,
        *,
        name: str | None = None,
        objective: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Make sure the session of ``key`` exists; returns its id (the same in every process)."""
        op = make_keyed_create(key, name, objective, metadata)
        self._add(op)
        return op.session_id

    def set_status(self, session_id: str, status: SessionStatus | str) -> None:
        """As :meth:`SessionStore.set_status`."""
        self._add(SetStatus(session_id=session_id, status=SessionStatus(status)))

    def heartbeat(self, session_id: str) -> None:
        """As :meth:`SessionStore.heartbeat`."""
        self._add(Heartbeat.make(session_id))

    def save_checkpoint(self, session_id: str, name: str, data: Any) -> Checkpoint:
        """As :meth:`SessionStore.save_checkpoint`."""
        op = SaveCheckpoint(session_id=session_id, name=name, data=data)
        self._add(op)
        return checkpoint_from_op(op)

    def log_event(
        self, session_id: str, message: str, level: EventLevel = "info", data: Any = None
    ) -> Event:
        """As :meth:`SessionStore.log_event`; the Event's ``id`` is None."""
        op = LogEvent.make(session_id, message, level, data)
        self._add(op)
        return event_from_op(op, None)

    def put_checkpoint(
        self,
        session_id: str,
        checkpoint_id: str,
        data: Any = None,
        *,
        namespace: str = "",
        parent_id: str | None = None,
        name: str = "checkpoint",
        metadata: dict[str, Any] | None = None,
        blob: bytes | None = None,
        run_id: str | None = None,
    ) -> Checkpoint:
        """As :meth:`SessionStore.put_checkpoint`."""
        op = make_put_checkpoint(
            session_id,
            checkpoint_id,
            data,
            namespace=namespace,
            parent_id=parent_id,
            name=name,
            metadata=metadata,
            blob=blob,
            run_id=run_id,
        )
        self._add(op)
        return checkpoint_from_put(op)

    def put_writes(
        self,
        session_id: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[WriteTuple],
        *,
        namespace: str = "",
        task_path: str = "",
        replace: bool = False,
    ) -> None:
        """As :meth:`SessionStore.put_writes`."""
        self._add(
            make_put_writes(
                session_id,
                checkpoint_id,
                task_id,
                writes,
                namespace=namespace,
                task_path=task_path,
                replace=replace,
            )
        )

    def delete_session(self, session_id: str) -> None:
        """As :meth:`SessionStore.delete_session`."""
        self._add(DeleteSession(session_id=session_id))

    def prune_checkpoints(
        self, session_id: str, keep: int, *, namespace: str | None = None
    ) -> None:
        """As :meth:`SessionStore.prune_checkpoints`."""
        self._add(PruneCheckpoints(session_id=session_id, keep=keep, namespace=namespace))

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """As :meth:`SessionStore.delete_runs`."""
        self._add(DeleteRuns(run_ids=list(run_ids)))

    def copy_session(self, source_id: str, target_id: str) -> None:
        """As :meth:`SessionStore.copy_session`."""
        self._add(CopySession(source_id=source_id, target_id=target_id))
