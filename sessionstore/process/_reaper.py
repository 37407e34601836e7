"""Ending the process trees that dead orchestrators left behind (SIGKILL, OOM, power loss).

For each session whose owner process is gone (its recorded ``(pid, start_ticks, boot_id)`` no
longer names a running process), the trees are found from two sides, always both:

* every child row still open goes through the one triage (:func:`._recorded.triage`): alive →
  pinned and its tree ended; a zombie → exited; gone, reused or from another boot → marked gone,
  never signalled; unreadable → left alone (fail closed);
* one scan of every process's environment for the session's tree marker, *whatever the rows
  say*: children that exited long ago may have left daemons behind (``setsid -f``, ``nohup``,
  a double fork, a tmux server), and those still carry the marker. Markers count only for
  owners that are verifiably dead;
* the session cgroups dead owners left behind (the cgroup tier, see :mod:`._cgroup`): all
  their processes, found whatever they did to their environment; each cgroup is removed once
  empty.

Everything found is ended like shutdown does (SIGTERM → grace → freeze, SIGKILL → verify). These
are not our children: we wait on their pidfds and never ``waitpid`` them. Then an ACTIVE session
(or a PAUSED one with children still recorded running) is marked crashed.

What a reap can claim: the dead owner's orphans were re-parented to init or to its own
subreaper, not to this process, so an escapee that also cleared its environment is invisible
here unless it is in a cgroup (and the reaper cannot tell whether every child of the dead owner
started in one: tracked and adopted ones did not). A reap therefore never reports
``verified``; it reports ``unverified`` with that reason when it saw nothing left,
``orphans_left`` when something survived. Every reap scans again, so a session whose reap
could not verify is looked at by the next one too.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from .._identity import IdentityStatus, ProcessIdentity, boot_id, hostname
from .._models import ChildProcess, Session, SessionStatus
from .._proc import ProcessUnreadableError, environ_value, scan
from ..errors import SessionStoreError
from ._cgroup import SessionCgroup, left_behind
from ._children import row_state
from ._pin import Pin
from ._recorded import OPEN_STATES, triage
from ._reports import ReapAction, ReapedChild, ReapedSession, ReapReport, Verification
from ._terminate import terminate_trees
from ._tree import MARKER_NAME, Scope, TreeFinder

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
_SETTLED_ACTION: dict[str, ReapAction] = {
    "gone": "marked_gone",
    "exited": "already_exited",
    "left": "left_unknown",
}
_NOT_OURS = (
    "reaped from another process: the dead owner's orphans were re-parented to init (or its "
    "own subreaper), not to this process, so one that left its tree and cleared its "
    "environment cannot be seen; found through recorded rows, their groups and the tree marker"
)


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
    marked: Counter[str] | None = None  # session id -> live processes carrying its marker
    cgroups: dict[str, list[tuple[SessionCgroup, int, int]]] = {}
    for session in store.list_sessions():
        rows = store.children(session.id)
        running = [r for r in rows if r.state in OPEN_STATES]
        why = _why_not_orphaned(session)
        if why is not None:
            if session.status is SessionStatus.ACTIVE or running:
                skipped[session.id] = why
            continue
        if marked is None:
            marked, cgroups = _marked_sessions(), left_behind()
        left = _dead_owners_cgroups(cgroups.get(session.id, []))
        if (
            session.status is not SessionStatus.ACTIVE
            and not running
            and not marked[session.id]
            and not left
        ):
            continue  # ended, and nothing of its trees is alive that we can see
        sessions.append(
            _reap_session(
                store,
                session,
                running,
                left,
                dry_run=dry_run,
                grace_s=grace_s,
                kill_verify_s=kill_verify_s,
            )
        )
    return ReapReport(
        dry_run=dry_run, sessions=sessions, skipped=skipped, duration_s=time.monotonic() - t0
    )


def _dead_owners_cgroups(found: list[tuple[SessionCgroup, int, int]]) -> list[SessionCgroup]:
    """The cgroups whose owner process is verifiably dead (a live owner's are its own)."""
    dead = []
    for cg, pid, ticks in found:
        if pid <= 0 or ticks < 0:
            continue
        status = ProcessIdentity(pid=pid, start_ticks=ticks, boot_id=boot_id()).check()
        if status in _DEAD_OWNER:
            dead.append(cg)
    return dead


def _marked_sessions() -> Counter[str]:
    """Count live processes per session id found in tree markers (one scan for all sessions)."""
    found: Counter[str] = Counter()
    name = MARKER_NAME.encode()
    for info in scan().procs.values():
        if info.finished:
            continue
        try:
            value = environ_value(info.pid, name)
        except ProcessUnreadableError:
            continue  # cannot be read: the per-session scan reports what it could not see
        if value is not None:
            found[value.decode("utf-8", "replace").rsplit(":", 2)[0]] += 1
    return found


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
    cgroups: list[SessionCgroup],
    *,
    dry_run: bool,
    grace_s: float,
    kill_verify_s: float,
) -> ReapedSession:
    assert session.owner is not None
    reports: list[ReapedChild] = []
    roots: list[tuple[ChildProcess, Pin]] = []
    for row in running:
        verdict = triage(row)
        if verdict.pin is not None:
            roots.append((row, verdict.pin))
            if dry_run:
                reports.append(_child(row, verdict.status, "would_terminate"))
            continue
        assert verdict.outcome is not None
        action = _SETTLED_ACTION[verdict.outcome]
        if dry_run and action == "marked_gone":
            action = "would_mark_gone"
        if verdict.state is not None and not dry_run:
            store.remove_child(
                session.id, row.pid, None, state=verdict.state, start_ticks=row.start_ticks
            )
        reports.append(_child(row, verdict.status, action))

    scope = Scope(session.id)
    pins = [pin for _, pin in roots]
    if dry_run:
        finder = TreeFinder({p.pid: p for p in pins}, scope)
        found = {p.pid for p in finder.find().new}
        found.update(pid for cg in cgroups for pid in cg.pids())
        for pin in [*pins, *finder.known.values()]:
            pin.close()
        return _session_report(
            session,
            reports,
            descendants=len(found.difference(p.pid for p in pins)),
            verification="unverified",
            reason=_NOT_OURS,
            new_status=SessionStatus.CRASHED if _crashes(session, running) else session.status,
        )

    result = terminate_trees(
        pins,
        grace_s=grace_s,
        kill_verify_s=kill_verify_s,
        scope=scope,
        incomplete=_NOT_OURS,
        extra_cgroups=cgroups,
    )
    for cg in cgroups:
        cg.remove()  # once empty; a cgroup still holding a survivor stays for the next reap
    descendants = sum(1 for p in result.pins if p.source == "descendant" and p.has_exited())
    for row, pin in roots:
        store.remove_child(
            session.id, row.pid, None, state=row_state(pin), start_ticks=row.start_ticks
        )
        reports.append(_child(row, IdentityStatus.ALIVE, _ENDED_ACTION[pin.outcome()]))
    for pin in result.pins:
        pin.close()

    # Crashed only now, after its trees were ended and the verification is known.
    new_status = session.status
    if _crashes(session, running):
        try:
            store.set_status(session.id, SessionStatus.CRASHED)
        except SessionStoreError:
            pass  # reported as unchanged
        else:
            new_status = SessionStatus.CRASHED
    return _session_report(
        session,
        reports,
        descendants=descendants,
        verification=result.verification,
        reason=result.verification_reason,
        tier=result.enumeration,
        new_status=new_status,
    )


def _crashes(session: Session, running: list[ChildProcess]) -> bool:
    return session.status is SessionStatus.ACTIVE or (
        session.status is SessionStatus.PAUSED and bool(running)
    )


def _session_report(
    session: Session,
    reports: list[ReapedChild],
    *,
    descendants: int,
    verification: Verification,
    reason: str | None,
    tier: str = "",
    new_status: SessionStatus,
) -> ReapedSession:
    assert session.owner is not None
    return ReapedSession(
        session_id=session.id,
        name=session.name,
        owner_pid=session.owner.pid,
        owner_identity=session.owner.check().value,
        previous_status=session.status,
        new_status=new_status,
        children=reports,
        descendants_ended=descendants,
        verified_no_orphans=verification == "verified",
        verification=verification,
        verification_reason=reason,
        enumeration=tier,
    )


def _child(row: ChildProcess, status: IdentityStatus, action: ReapAction) -> ReapedChild:
    return ReapedChild(
        pid=row.pid,
        start_ticks=row.start_ticks,
        argv=row.argv,
        identity=status.value,
        action=action,
    )
