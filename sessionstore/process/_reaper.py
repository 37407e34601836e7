"""Ending the children that dead orchestrators left behind (SIGKILL, OOM, power loss).

For each session whose owner process is gone (its recorded ``(pid, start_ticks, boot_id)`` no
longer names a running process), every child row still marked running is checked:

* the PID names the recorded process → pinned (pidfd, identity re-read after opening) and its
  tree ended: SIGTERM → grace → freeze, SIGKILL → verify, like shutdown. These are not our
  children: we wait on their pidfds and never ``waitpid`` them;
* the PID is free, names another process, or dates from another boot → the row is marked gone
  and nothing is signalled;
* it cannot be read (another user, another PID namespace) → left alone: fail closed.

The session is then marked crashed. Sessions whose owner is alive, on another host, or whose
owner identity cannot be read are never touched.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._identity import IdentityStatus, boot_id, hostname
from .._models import ChildProcess, ChildState, Session, SessionStatus
from ..errors import SessionStoreError, UnsafeSignalError
from ._children import row_state
from ._pin import Pin
from ._recorded import OPEN_STATES
from ._reports import ReapAction, ReapedChild, ReapedSession, ReapReport
from ._terminate import terminate_trees
from ._tree import marker_entry

if TYPE_CHECKING:
    from .._store import SessionStore

__all__ = ["reap_orphans"]

_DEAD_OWNER = (
    IdentityStatus.GONE,
    IdentityStatus.REUSED,
    IdentityStatus.OTHER_BOOT,
    IdentityStatus.ZOMBIE,
)
_ENDED_ACTION: dict[str, ReapAction] = {
    "exited": "already_exited",
    "terminated": "terminated",
    "killed": "killed",
    "unkillable": "unkillable",
}


def reap_orphans(
    store: SessionStore,
    *,
    dry_run: bool = False,
    grace_s: float = 5.0,
    kill_verify_s: float = 2.0,
) -> ReapReport:
    """End the recorded children of sessions whose owner process is gone; mark them crashed.

    Args:
        store: an open :class:`~sessionstore.SessionStore`.
        dry_run: only report what would be done; signal nothing, write nothing.
        grace_s: SIGTERM → SIGKILL grace for each orphaned tree.
        kill_verify_s: how long SIGKILL may take to be verified.

    Returns:
        What was found and done; ``skipped`` says why each other session was left alone.

    Raises:
        StoreClosedError: the store is closed (reads are needed).
        ValueError: a duration is negative.

    Afterwards each orphaned session is CRASHED (when it was ACTIVE, or PAUSED with children
    still running) and each of its running rows records how the child ended.
    """
    if grace_s < 0 or kill_verify_s < 0:
        raise ValueError("grace_s and kill_verify_s must be >= 0")
    t0 = time.monotonic()
    sessions: list[ReapedSession] = []
    skipped: dict[str, str] = {}
    for session in store.list_sessions():
        rows = store.children(session.id)
        running = [r for r in rows if r.state in OPEN_STATES]
        if session.status is not SessionStatus.ACTIVE and not running:
            continue  # nothing left to do for a session that ended cleanly
        why = _why_not_orphaned(session)
        if why is not None:
            skipped[session.id] = why
            continue
        sessions.append(
            _reap_session(
                store,
                session,
                running,
                dry_run=dry_run,
                grace_s=grace_s,
                kill_verify_s=kill_verify_s,
            )
        )
    return ReapReport(
        dry_run=dry_run, sessions=sessions, skipped=skipped, duration_s=time.monotonic() - t0
    )


def _why_not_orphaned(session: Session) -> str | None:
    owner = session.owner
    if owner is None:
        return "no owner identity recorded"
    if session.owner_host is not None and session.owner_host != hostname():
        return f"owner runs on another host ({session.owner_host})"
    status = owner.check()
    if status is IdentityStatus.ALIVE:
        return "owner is alive"
    if status not in _DEAD_OWNER:
        return "owner identity cannot be read (left alone: fail closed)"
    return None


def _reap_session(
    store: SessionStore,
    session: Session,
    running: list[ChildProcess],
    *,
    dry_run: bool,
    grace_s: float,
    kill_verify_s: float,
) -> ReapedSession:
    assert session.owner is not None
    reports: list[ReapedChild] = []
    roots: list[tuple[ChildProcess, Pin]] = []
    for row in running:
        status = IdentityStatus.OTHER_BOOT if row.boot_id != boot_id() else row.identity.check()
        action: ReapAction
        if status is IdentityStatus.ALIVE:
            try:
                pin = Pin.pin(
                    row.pid, source="recorded", expected_start_ticks=row.start_ticks, argv=row.argv
                )
            except ProcessLookupError:
                status, pin = IdentityStatus.GONE, None
            except UnsafeSignalError:
                status, pin = IdentityStatus.UNKNOWN, None
            if pin is not None:
                if dry_run:
                    pin.close()
                    reports.append(_child(row, status, "would_terminate"))
                else:
                    roots.append((row, pin))
                continue
        if status is IdentityStatus.ZOMBIE:
            action, state = "already_exited", ChildState.EXITED
        elif status is IdentityStatus.UNKNOWN:
            action, state = "left_unknown", None
        else:
            action = "would_mark_gone" if dry_run else "marked_gone"
            state = ChildState.GONE
        if state is not None and not dry_run:
            store.remove_child(session.id, row.pid, None, state=state, start_ticks=row.start_ticks)
        reports.append(_child(row, status, action))

    descendants_ended = 0
    verified = True
    if roots:
        result = terminate_trees(
            [pin for _, pin in roots],
            grace_s=grace_s,
            kill_verify_s=kill_verify_s,
            marker=marker_entry(session.id, session.owner),
        )
        verified = result.verified_no_orphans
        descendants_ended = sum(
            1 for p in result.pins if p.source == "descendant" and p.has_exited()
        )
        for row, pin in roots:
            store.remove_child(
                session.id, row.pid, None, state=row_state(pin), start_ticks=row.start_ticks
            )
            reports.append(_child(row, IdentityStatus.ALIVE, _ENDED_ACTION[pin.outcome()]))
        for pin in result.pins:
            pin.close()

    new_status = session.status
    if session.status is SessionStatus.ACTIVE or (
        session.status is SessionStatus.PAUSED and running
    ):
        new_status = SessionStatus.CRASHED
        if not dry_run:
            try:
                store.set_status(session.id, SessionStatus.CRASHED)
            except SessionStoreError:
                new_status = session.status
    return ReapedSession(
        session_id=session.id,
        name=session.name,
        owner_pid=session.owner.pid,
        owner_identity=session.owner.check().value,
        previous_status=session.status,
        new_status=new_status,
        children=reports,
        descendants_ended=descendants_ended,
        verified_no_orphans=verified,
    )


def _child(row: ChildProcess, status: IdentityStatus, action: ReapAction) -> ReapedChild:
    return ReapedChild(
        pid=row.pid,
        start_ticks=row.start_ticks,
        argv=row.argv,
        identity=status.value,
        action=action,
    )
