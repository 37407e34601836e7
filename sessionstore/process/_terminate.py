"""Ending whole process trees: SIGTERM → wait on pidfds → freeze, SIGKILL → verify gone.

Used by shutdown (our own children) and by the orphan reaper (children of a dead orchestrator).
Every signal goes through a :class:`~._pin.Pin`, which re-verifies identity first. Waiting is one
selector over pidfds (plus a wake fd, so a second Ctrl-C cuts the grace short); it polls only for
pins that have no pidfd (no pidfd support, EMFILE), every 20 ms.

Verification is per process, never "the leader died so the group is gone" (supervisord's leak):
a process is gone when its pidfd is readable or ``/proc`` shows it a zombie; zombies cannot run.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._proc import ProcessUnreadableError, wait_pidfds
from ..errors import UnsafeSignalError
from ._adopted import Adoptions
from ._cgroup import SessionCgroup
from ._pin import Pin
from ._reports import Verification
from ._tree import Scope, TreeFinder

__all__ = ["TerminationResult", "Verification", "terminate_trees", "wait_exited"]

_TERM_ROUNDS = 20  # grace rounds that SIGTERM newly found members; a hopper meets SIGKILL


@dataclass
class TerminationResult:
    """What ending the trees did. ``pins`` holds roots first, then descendants found."""

    pins: list[Pin]
    escalated_to_sigkill: bool = False
    escalated_by_request: bool = False
    unkillable: list[Pin] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    verification: Verification = "unverified"
    verification_reason: str | None = "tree termination did not run"
    enumeration: str = "none"  # how members were found: the tier named in reports

    @property
    def verified_no_orphans(self) -> bool:
        """True only when the enumeration was complete by construction and found nothing."""
        return self.verification == "verified"


def wait_exited(
    pins: Iterable[Pin],
    deadline: float,
    *,
    wake_fd: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until every pin has exited, the monotonic ``deadline`` passes, or we are woken.

    Args:
        pins: the processes to wait for.
        deadline: a ``time.monotonic()`` value.
        wake_fd: also wake when this fd turns readable; then ``should_stop()`` decides.
        should_stop: checked on every wake; True ends the wait early.

    Returns:
        True when all had exited.
    """
    remaining = [p for p in pins if not p.has_exited()]
    fds = {fd: pin for pin in remaining if (fd := pin.fileno()) is not None}
    polled = [pin for pin in remaining if pin.fileno() is None]

    def polled_exited() -> bool:
        polled[:] = [p for p in polled if not p.has_exited()]
        return not polled

    left = wait_pidfds(
        fds,
        deadline,
        wake_fd=wake_fd,
        should_stop=should_stop,
        poll=polled_exited if polled else None,
    )
    return not left and not polled


def _signal_trees(roots: list[Pin], pins: Iterable[Pin], sig: int) -> None:
    """Send ``sig`` to each root's group that has a live member, then to other live pins.

    Only live pins are marked as having received it: a zombie in a group is not "killed" by a
    signal it can no longer receive.
    """
    live = [p for p in pins if not p.has_exited()]
    live_groups = {p.pgid for p in live}
    groups: set[int] = set()
    for root in roots:
        pgid = root.pgid
        if pgid is None or pgid not in live_groups or pgid in groups:
            continue
        if root.send_group(sig):
            groups.add(pgid)
    for pin in live:
        if pin.pgid in groups:
            pin.note_signal(sig)  # reached through its group
        else:
            pin.send(sig)


def _settle_after_kill(
    finder: TreeFinder, order: list[Pin], deadline: float
) -> tuple[Literal["clean", "unknown", "left"], str | None]:
    """Kill what a full scan still finds until two consecutive scans prove nothing is left.

    A member that dies leaves a zombie that only its parent reaps, and every member's parent is
    a member or this process (the subreaper), which reaps only inside a scan, after seeing the
    zombie. Hence: two full scans with no live member, the second showing no zombie the first
    did not, mean no member ran in between; a process forked after the first scan listed
    ``/proc`` would have a live or newly dead parent in the second. One clean scan alone is not
    enough: a PID hopper forks its next self after ``/proc`` was listed and dies before it is
    read. Before each full scan an incremental chase stops and kills what it can reach fast.

    Returns:
        ``("clean", None)``; ``("unknown", why)`` when processes could not be read (they may or
        may not be members: unknown is never taken for gone); ``("left", why)`` when members
        were still alive at the deadline.
    """
    previous: frozenset[tuple[int, int]] | None = None
    while True:
        wait_exited(order, deadline)
        _chase(finder, order, deadline, signal.SIGKILL)
        found = finder.find(full=True, stop=True)
        order.extend(found.new)
        for pin in found.new:
            pin.send(signal.SIGKILL)
        if found.unreadable:
            return "unknown", f"{found.unreadable} processes could not be read (/proc)"
        finder.environ_unreadable = found.environ_unreadable
        if not found.new and not found.alive:
            if previous is not None and found.zombies <= previous:
                return "clean", None
            previous = found.zombies
        else:
            previous = None
        if time.monotonic() >= deadline:
            alive = sorted(found.alive)
            if alive:
                return "left", f"still alive after SIGKILL at the deadline: pids {alive[:20]}"
            # The last scan saw none alive, but new zombies since the scan before: members
            # were still running between the two (a process forking in a loop), and one may be.
            return "left", (
                "members were still appearing at the deadline: the last scan found new zombies "
                "of the trees and none alive, so one may have been running between reads"
            )


def _freeze(finder: TreeFinder, order: list[Pin], deadline: float) -> None:
    """SIGSTOP every live member, then rescan, stopping each find, until a full scan adds none.

    Incremental scans (only processes not seen before) run between full ones: a process that
    forks and exits in a loop hops every ~1 ms, a full scan takes about as long, an incremental
    one a tenth of that. The deadline bounds the loop; the SIGKILL wave and verification follow
    either way.
    """
    for pin in order:
        if not pin.has_exited():
            pin.send(signal.SIGSTOP)
    while time.monotonic() < deadline:
        _chase(finder, order, deadline, None)
        new = finder.find(full=True, stop=True).new
        order.extend(new)
        if not new:
            return


def _chase(finder: TreeFinder, order: list[Pin], deadline: float, sig: int | None) -> None:
    """Walk the child lists, then incremental scans (stopping each find, then ``sig``).

    The walk (:meth:`TreeFinder.chase`) catches every descendant of this process (the
    subreaper) and of the pinned members; the incremental scans then catch members found only
    by their tree marker or group, until one finds nothing.
    """
    order.extend(finder.chase(deadline, sig=sig))
    while time.monotonic() < deadline:
        new = finder.find(full=False, stop=True).new
        order.extend(new)
        if sig is not None:
            for pin in new:
                pin.send(sig)
        if not new:
            return


def terminate_trees(
    roots: list[Pin],
    *,
    grace_s: float,
    kill_verify_s: float,
    scope: Scope,
    incomplete: str | None = None,
    cgroup: SessionCgroup | None = None,
    extra_cgroups: Sequence[SessionCgroup] = (),
    wake_fd: int | None = None,
    escalated: Callable[[], bool] = lambda: False,
    adoptions: Adoptions | None = None,
) -> TerminationResult:
    """End the roots and every process in their trees.

    Args:
        roots: pinned processes whose trees are to end (their groups get the signals).
        grace_s: how long SIGTERM may take before SIGKILL.
        kill_verify_s: how long SIGKILL may take to be verified; what is left is unkillable.
        scope: where else members are looked for (tree markers, this process's descendants).
        incomplete: why the enumeration cannot be complete by construction, or None when it is
            (``scope.own_descendants`` with the subreaper held since the first child started,
            or every child started inside ``cgroup``).
        cgroup: the session cgroup the children were started in (the cgroup tier), or None.
            Its members are pinned while it is frozen, it is frozen again before the SIGKILL
            wave, killed as a whole, and must be empty (``populated 0``) to verify.
        extra_cgroups: more cgroups to end the same way (the reaper: every cgroup the
            session's dead owners left behind).
        wake_fd: wakes the grace wait (a second Ctrl-C); ``escalated()`` then says whether to
            skip the rest of the grace period.
        escalated: True when the grace period is to be cut short.
        adoptions: what the caller knows of the children it adopted (the layer's long-running
            record); a fresh one when None.

    Returns:
        The result; no exception for processes that would not die (they are listed as
        unkillable and do not block). ``verification`` is ``verified`` only when
        ``incomplete`` is None and two full scans after the SIGKILL wave proved nothing left.
    """
    t0 = time.monotonic()
    known: dict[int, Pin] = {p.pid: p for p in roots}
    order: list[Pin] = list(roots)
    finder = TreeFinder(known, scope, adoptions)
    cgroups = [*([cgroup] if cgroup is not None else []), *extra_cgroups]
    result = TerminationResult(pins=order, enumeration=_tier(scope, cgroups))
    for cg in cgroups:
        # Pinned while frozen: a frozen process cannot exit, so its pid cannot be recycled
        # between reading cgroup.procs and opening the pidfd.
        _pin_cgroup(cg, known, order, t0 + max(kill_verify_s, 0.5))
        cg.thaw()
    order.extend(finder.find().new)

    if not escalated():
        grace_deadline = t0 + grace_s
        _term(roots, order)
        for _ in range(_TERM_ROUNDS):
            wait_exited(order, grace_deadline, wake_fd=wake_fd, should_stop=escalated)
            if escalated() or time.monotonic() >= grace_deadline:
                break
            # Everything known exited: members forked or adopted meanwhile get SIGTERM too.
            new = finder.find().new
            if not new:
                break
            order.extend(new)
            _term(roots, new)
    result.escalated_by_request = escalated()
    t1 = time.monotonic()
    result.durations["terminate"] = t1 - t0

    verify_deadline = t1 + kill_verify_s
    for cg in cgroups:
        _pin_cgroup(cg, known, order, verify_deadline)  # and it stays frozen
    order.extend(finder.find(stop=True).new)
    if any(not p.has_exited() for p in order) or any(cg.populated() for cg in cgroups):
        result.escalated_to_sigkill = True
        _freeze(finder, order, verify_deadline)
        _signal_trees(roots, order, signal.SIGKILL)
        for cg in cgroups:
            if cg.kill():
                for pin in order:
                    if not pin.has_exited() and cg.contains(pin.pid):
                        pin.note_signal(signal.SIGKILL)
    t2 = time.monotonic()
    result.durations["kill"] = t2 - t1

    full = [cg.path for cg in cgroups if not cg.wait_empty(verify_deadline)]
    settled, why = _settle_after_kill(finder, order, verify_deadline)
    if full and settled != "left":
        settled, why = "left", f"cgroups still hold processes: {full}"
    if any(p.kill_sent for p in order):
        result.escalated_to_sigkill = True
    result.unkillable = [p for p in order if not p.has_exited()]
    for pin in order:
        if pin.source == "descendant" and pin.has_exited():
            # An adopted orphan is reaped (nobody else will); a child this process forked
            # itself is left to the code that waits for it (see ._adopted).
            pin.collect(reap_adopted=pin.adopted)
    if result.unkillable or settled == "left":
        result.verification = "orphans_left"
        result.verification_reason = why or f"{len(result.unkillable)} processes survived SIGKILL"
    elif settled == "unknown":
        result.verification, result.verification_reason = "unverified", why
    elif incomplete is not None:
        if finder.environ_unreadable and scope.session_id is not None:
            incomplete += (
                f"; the environments of {finder.environ_unreadable} processes could not be "
                "read, so their tree markers are unknown"
            )
        result.verification, result.verification_reason = "unverified", incomplete
    else:
        result.verification, result.verification_reason = "verified", None
    result.durations["verify"] = time.monotonic() - t2
    return result


def _term(roots: list[Pin], pins: list[Pin]) -> None:
    _signal_trees(roots, pins, signal.SIGTERM)
    # SIGCONT right after (systemd does the same) so a stopped process can act on SIGTERM.
    _signal_trees(roots, [p for p in pins if p.term_sent], signal.SIGCONT)


def _pin_cgroup(
    cgroup: SessionCgroup, known: dict[int, Pin], order: list[Pin], deadline: float
) -> None:
    """Freeze the cgroup and pin each member not pinned yet (checked to be inside after)."""
    cgroup.freeze(deadline)
    for pid in cgroup.pids():
        if pid in known:
            continue
        try:
            pin = Pin.pin(pid, source="descendant", argv=[])
        except (ProcessLookupError, UnsafeSignalError, ProcessUnreadableError):
            continue
        if not cgroup.contains(pid):  # the pid was recycled before the pidfd was open
            pin.close()
            continue
        pin.adopted = True  # only spawn starts processes in the session cgroup: not forked here
        known[pid] = pin
        order.append(pin)


def _tier(scope: Scope, cgroups: Sequence[SessionCgroup] = ()) -> str:
    parts = ["pinned roots and their groups"]
    if cgroups:
        parts.insert(0, "cgroup (frozen, cgroup.kill, populated 0)")
    if scope.session_id is not None:
        parts.append("tree marker")
    if scope.own_descendants:
        parts.append("subreaper descendants")
    return " + ".join(parts) + ", frozen with SIGSTOP"
