"""What shutdown and the orphan reaper report: frozen pydantic models, safe to share."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from .._models import CloseReport, Frozen, SessionStatus

__all__ = [
    "CallbackError",
    "ChildOutcome",
    "Outcome",
    "ReapReport",
    "ReapedChild",
    "ReapedSession",
    "ShutdownPhase",
    "ShutdownReport",
    "Verification",
]

Verification = Literal["verified", "unverified", "orphans_left"]
"""Whether a report may say no process of the trees is left.

``verified``: the enumeration was complete by construction (this process was the child
subreaper of every tree, so every descendant stayed below it) and two full scans after the last
SIGKILL found none alive; ``unverified``: none was seen, but some could not have been (the
reason says why: no subreaper, roots started elsewhere, a reap from another process);
``orphans_left``: processes of the trees were still alive at the deadline."""

Outcome = Literal["exited", "terminated", "killed", "unkillable", "gone", "left"]
"""How a process ended: on its own (``exited``), on our SIGTERM (``terminated``), on SIGKILL
(``killed``); still there after SIGKILL and the verify deadline (``unkillable``); its PID no longer
named the recorded process, so it was never signalled (``gone``); or left untouched because its
identity could not be read (``left``: fail closed)."""


class ShutdownPhase(str, enum.Enum):
    """When an exit callback runs in the shutdown sequence."""

    BEFORE_CHILDREN = "before_children"  # first: stop accepting work
    AFTER_CHILDREN = "after_children"  # every child tree has ended; the store is open
    BEFORE_CLOSE = "before_close"  # final state written; the store is closed right after


class ChildOutcome(Frozen):
    """How one process ended during shutdown."""

    pid: int
    start_ticks: int | None = None
    pgid: int | None = None
    argv: list[str] = Field(default_factory=list)
    source: Literal["spawned", "tracked", "recorded", "descendant"]
    outcome: Outcome
    exit_code: int | None = None  # Popen form: -N when killed by signal N; None when unknown


class CallbackError(Frozen):
    """An exit callback that raised or outlasted its budget; the sequence went on."""

    phase: ShutdownPhase
    callback: str
    error: str
    timed_out: bool = False


class ShutdownReport(Frozen):
    """What one shutdown did. Every caller of ``shutdown()`` receives this same object."""

    session_id: str
    cause: str  # "SIGTERM", "SIGINT", ... or "explicit" / "atexit"
    signal_number: int | None = None
    reason: str | None = None
    started_at: float  # wall clock
    duration_s: float
    phases: dict[str, float] = Field(default_factory=dict)  # phase -> seconds, in order
    children: list[ChildOutcome] = Field(default_factory=list)  # recorded in the store
    descendants: list[ChildOutcome] = Field(default_factory=list)  # found in their trees
    escalated_to_sigkill: bool = False
    escalated_by_signal: bool = False  # a second SIGINT (or SIGQUIT) cut the grace period
    verified_no_orphans: bool = False  # verification == "verified", never true otherwise
    verification: Verification = "unverified"
    verification_reason: str | None = None  # why not verified; None when verified
    enumeration: str = ""  # how the trees' members were found (the tier used)
    session_status: SessionStatus | None = None
    close_report: CloseReport | None = None
    callback_errors: list[CallbackError] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)  # grace that was lost; the sequence went on
    deadline_s: float | None = None  # ProcessLayer.shutdown_deadline_s when it ran
    deadline_exceeded: bool = False  # duration_s > deadline_s (then the watchdog may have fired)
    handlers_replaced: list[str] = Field(default_factory=list)  # our signal handlers taken later


ReapAction = Literal[
    "terminated",
    "killed",
    "unkillable",
    "marked_gone",
    "already_exited",
    "left_unknown",
    "would_terminate",
    "would_mark_gone",
]


class ReapedChild(Frozen):
    """One recorded child of an orphaned session and what the reaper did with it."""

    pid: int
    start_ticks: int
    argv: list[str] = Field(default_factory=list)
    identity: str  # what the recorded identity referred to: alive, zombie, gone, reused, ...
    action: ReapAction


class ReapedSession(Frozen):
    """A session whose owner is gone, and what was done about it."""

    session_id: str
    name: str
    owner_pid: int | None
    owner_identity: str  # gone / reused / other_boot / zombie
    previous_status: SessionStatus
    new_status: SessionStatus
    children: list[ReapedChild] = Field(default_factory=list)
    descendants_ended: int = 0  # found in the trees and ended (a dry run: would be ended)
    verified_no_orphans: bool = False  # verification == "verified", never true otherwise
    verification: Verification = "unverified"
    verification_reason: str | None = None  # why not verified; None when verified
    enumeration: str = ""  # how the trees' members were found (the tier used)


class ReapReport(Frozen):
    """What :func:`~sessionstore.process.reap_orphans` found and did."""

    dry_run: bool
    sessions: list[ReapedSession] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # session id -> why it was left alone
    duration_s: float = 0.0
