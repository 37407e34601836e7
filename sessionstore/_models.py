"""The values the store returns: frozen pydantic models, safe to hand across threads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import _exports
from ._enums import ChildState, EventLevel, SessionStatus, StoreState
from ._identity import ProcessIdentity

__all__ = [
    "Checkpoint",
    "CheckpointResult",
    "CheckpointWrite",
    "ChildProcess",
    "ChildState",
    "CloseReport",
    "Event",
    "EventLevel",
    "Frozen",
    "OpFailure",
    "ReplayReport",
    "Session",
    "SessionStatus",
    "StoreState",
    "StoreStats",
]


class Frozen(BaseModel):
    """The base of every value model of the package: frozen, so safe to share across threads."""

    model_config = ConfigDict(frozen=True)  # built at import: see _ops._OpBase for why


class Session(Frozen):
    """One orchestrator session."""

    id: str
    name: str
    objective: str | None = None
    status: SessionStatus
    metadata: dict[str, Any] = Field(default_factory=dict)
    key: str | None = None  # the caller's key, for a session made by get_or_create_session_by_key
    owner: ProcessIdentity | None = None
    owner_host: str | None = None
    created_at: float
    updated_at: float
    paused_at: float | None = None
    resumed_at: float | None = None
    stopped_at: float | None = None
    heartbeat_at: float | None = None


class Checkpoint(Frozen):
    """A named snapshot of a session's state: JSON ``data``, and optionally binary ``blob``.

    ``id`` is the checkpoint's id: the store's for :meth:`SessionStore.save_checkpoint`, the
    caller's for :meth:`SessionStore.put_checkpoint` (unique per session and ``namespace``).
    """

    id: str
    session_id: str
    name: str
    data: Any
    created_at: float
    namespace: str = ""
    parent_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    blob: bytes | None = None
    run_id: str | None = None


class CheckpointWrite(Frozen):
    """One write attached to a checkpoint (a framework's pending write), keyed by task and idx."""

    # Built on first use: only the LangGraph integration makes one, never a hook or the
    # open -> write -> close path (the one model of this module off that path; measured).
    model_config = ConfigDict(frozen=True, defer_build=True)

    session_id: str
    namespace: str
    checkpoint_id: str
    task_id: str
    idx: int
    channel: str
    type: str | None = None
    blob: bytes | None = None
    task_path: str = ""


class Event(Frozen):
    """One log line of a session.

    ``id`` is the database's monotonic event id. It is None on the Event returned by a
    ``log_event`` call that was queued or journaled (store closing or closed): the row gets its
    id when it is applied; ``op_id`` identifies it in the meantime.
    """

    id: int | None
    op_id: str
    session_id: str
    level: EventLevel
    message: str
    data: Any = None
    created_at: float


class ChildProcess(Frozen):
    """A child process recorded for a session, with the identity captured when it was added."""

    session_id: str
    pid: int
    start_ticks: int
    boot_id: str
    pgid: int | None = None
    argv: list[str] = Field(default_factory=list)
    registered_at: float
    exited_at: float | None = None
    exit_code: int | None = None
    state: ChildState = ChildState.RUNNING

    @property
    def identity(self) -> ProcessIdentity:
        """The ``(pid, start_ticks, boot_id)`` recorded for this child."""
        return ProcessIdentity(pid=self.pid, start_ticks=self.start_ticks, boot_id=self.boot_id)


class CheckpointResult(Frozen):
    """The outcome of one WAL checkpoint."""

    at: float  # wall-clock time it finished
    mode: Literal["PASSIVE", "RESTART", "TRUNCATE"]
    ok: bool  # False: busy (readers or another checkpointer), to be tried again later
    log_frames: int
    checkpointed_frames: int
    wal_bytes_before: int
    wal_bytes_after: int
    duration_s: float
    error: str | None = None


class OpFailure(Frozen):
    """A write that could not be applied when it was made, and where it went instead."""

    op_id: str
    kind: str
    disposition: Literal["journaled", "rejected", "unrecorded"]
    reason: str
    at: float


class ReplayReport(Frozen):
    """What applying a journal did."""

    applied: int = 0  # ops applied (already-applied ones count: replay is idempotent)
    rejected: int = 0  # valid lines that could not apply (e.g. unknown session): kept aside
    invalid: int = 0  # lines that failed validation: kept aside
    torn: int = 0  # an incomplete last line (a crash mid-append): kept aside
    rejected_path: str | None = None  # where kept-aside lines went, each after its reason
    deferred: str | None = None  # why the journal was left for a later open (busy, disk), if so


class StoreStats(Frozen):
    """A snapshot of a store's counters. Counts are for this store object (this process)."""

    path: str
    state: StoreState
    leases: int
    pending: int  # ops queued while closing, not yet applied
    applied: int  # ops applied directly
    applied_from_queue: int
    replayed: int  # journal ops this store applied (at open, close or replay())
    journaled: int  # ops this store appended to the journal
    journal_bytes: int  # size of the journal file now (all processes' ops)
    wal_bytes: int  # size of the -wal file now
    checkpoints: int
    last_checkpoint: CheckpointResult | None = None
    failures: list[OpFailure] = Field(default_factory=list)  # the most recent ones


class CloseReport(Frozen):
    """What ``close()`` did. The store is CLOSED whatever the report says."""

    path: str
    already_closed: bool = False  # this call found the store closed and did nothing
    # The phases, in order; they add up to total_s.
    drain_s: float = 0.0  # waiting for leases in flight
    queue_s: float = 0.0  # applying (or journaling) the ops queued while closing
    replay_s: float = 0.0
    checkpoint_s: float = 0.0
    close_s: float = 0.0
    total_s: float = 0.0
    applied_from_queue: int = 0
    journaled: int = 0  # ops that went to the journal during this store's life
    replayed: int = 0
    abandoned_leases: list[str] = Field(default_factory=list)  # borrowers still holding one
    wal_bytes_before: int = 0
    wal_bytes_after: int = 0
    checkpoint: CheckpointResult | None = None
    errors: list[str] = Field(default_factory=list)  # grace that was lost; nothing leaked
    rejected: int = 0  # queued ops the database refused (unknown session...): kept aside
    # Queued ops neither applied nor journaled because the journal itself could not be
    # written (disk full, file too large, journal at its bound): each op's JSON line, also
    # logged at error level, so an operator can recover it. Empty unless the disk failed.
    unrecorded: list[str] = Field(default_factory=list)


_exports.publish_written_here(__name__)  # last: see _exports
