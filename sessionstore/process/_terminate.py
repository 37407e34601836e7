"""Ending whole process trees: SIGTERM → wait on pidfds → freeze, SIGKILL → verify gone.

Used by shutdown (our own children) and by the orphan reaper (children of a dead orchestrator).
Every signal goes through a :class:`~._pin.Pin`, which re-verifies identity first. Waiting is one
selector over pidfds (plus a wake fd, so a second Ctrl-C cuts the grace short); it polls only for
pins that have no pidfd (no pidfd support, EMFILE), every 20 ms.

Verification is per process, never "the leader died so the group is gone" (supervisord's leak):
a process is gone when its pidfd is readable or ``/proc`` shows it a zombie; zombies cannot run.
"""

from __future__ import annotations

import selectors
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ._pin import Pin
from ._tree import discover

__all__ = ["TerminationResult", "terminate_trees", "wait_exited"]

_POLL_S = 0.02  # only for pins without a pidfd
_MAX_SELECT_S = 3600.0  # clamp: huge select timeouts misbehave (python/cpython#154836)


@dataclass
class TerminationResult:
    """What ending the trees did. ``pins`` holds roots first, then descendants found."""

    pins: list[Pin]
    escalated_to_sigkill: bool = False
    escalated_by_request: bool = False
    verified_no_orphans: bool = False
    unkillable: list[Pin] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)


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
    if not remaining:
        return True
    with selectors.DefaultSelector() as sel:
        polled: list[Pin] = []
        for pin in remaining:
            fd = pin.fileno()
            if fd is None:
                polled.append(pin)
            else:
                sel.register(fd, selectors.EVENT_READ, pin)
        if wake_fd is not None:
            sel.register(wake_fd, selectors.EVENT_READ, None)
        waiting = len(remaining)
        while waiting:
            if should_stop():
                return False
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            if polled:
                timeout = min(timeout, _POLL_S)
            for key, _ in sel.select(min(timeout, _MAX_SELECT_S)):
                if key.data is None:
                    if should_stop():
                        return False
                    sel.unregister(key.fd)  # woken for something else: don't spin on it
                    continue
                sel.unregister(key.fd)
                waiting -= 1
            still = [p for p in polled if not p.has_exited()]
            waiting -= len(polled) - len(still)
            polled = still
    return True


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


def _add_new(
    known: dict[int, Pin], order: list[Pin], marker: bytes | None, sig: int | None
) -> list[Pin]:
    new = discover(known, marker=marker)
    for pin in new:
        known[pin.pid] = pin
        order.append(pin)
        if sig is not None:
            pin.send(sig)
    return new


def terminate_trees(
    roots: list[Pin],
    *,
    grace_s: float,
    kill_verify_s: float,
    marker: bytes | None,
    wake_fd: int | None = None,
    escalated: Callable[[], bool] = lambda: False,
) -> TerminationResult:
    """End the roots and every process in their trees.

    Args:
        roots: pinned processes whose trees are to end (their groups get the signals).
        grace_s: how long SIGTERM may take before SIGKILL.
        kill_verify_s: how long SIGKILL may take to be verified; what is left is unkillable.
        marker: the environment entry marking our trees (see :mod:`._tree`), or None.
        wake_fd: wakes the grace wait (a second Ctrl-C); ``escalated()`` then says whether to
            skip the rest of the grace period.
        escalated: True when the grace period is to be cut short.

    Returns:
        The result; no exception for processes that would not die (they are listed as
        unkillable and do not block).
    """
    t0 = time.monotonic()
    known: dict[int, Pin] = {p.pid: p for p in roots}
    order: list[Pin] = list(roots)
    result = TerminationResult(pins=order)
    _add_new(known, order, marker, None)

    if not escalated():
        _signal_trees(roots, order, signal.SIGTERM)
        # SIGCONT right after (systemd does the same) so a stopped process can act on SIGTERM.
        _signal_trees(roots, [p for p in order if p.term_sent], signal.SIGCONT)
        wait_exited(order, t0 + grace_s, wake_fd=wake_fd, should_stop=escalated)
        # A fork racing our SIGTERM is caught here; the kill phase below ends it.
        _add_new(known, order, marker, None)
    result.escalated_by_request = escalated()
    t1 = time.monotonic()
    result.durations["terminate"] = t1 - t0

    live = [p for p in order if not p.has_exited()]
    verify_deadline = t1 + kill_verify_s
    if live:
        result.escalated_to_sigkill = True
        # Freeze first, so nothing forks or gets re-parented while we enumerate; repeat until
        # an enumeration finds nothing new (systemd's cg_kill_items loop).
        for pin in live:
            pin.send(signal.SIGSTOP)
        while _add_new(known, order, marker, signal.SIGSTOP) and time.monotonic() < verify_deadline:
            pass
        while True:
            _signal_trees(roots, order, signal.SIGKILL)
            if not _add_new(known, order, marker, None) or time.monotonic() >= verify_deadline:
                break
    t2 = time.monotonic()
    result.durations["kill"] = t2 - t1

    wait_exited(order, verify_deadline)
    result.unkillable = [p for p in order if not p.has_exited()]
    for pin in order:
        if pin.source == "descendant" and pin.has_exited():
            pin.collect(reap_adopted=True)
    leftovers = []
    for pin in discover(known, marker=marker):
        if pin.has_exited():
            pin.collect(reap_adopted=True)  # an adopted orphan that died unseen: reap it
        else:
            leftovers.append(pin)
        pin.close()
    result.verified_no_orphans = not result.unkillable and not leftovers
    result.durations["verify"] = time.monotonic() - t2
    return result
