"""Finding every process that belongs to the trees of our children, in one ``/proc`` pass.

PIDs alone miss processes: a process-group kill misses a grandchild that ``setsid``s, and
``psutil.children(recursive=True)`` loses descendants whose intermediate parent already exited.
A tree here is the union of

* the pinned roots and everything below them (by parent pid);
* every process in a process group or session that a pinned process leads (never ours);
* every process carrying the tree marker in its environment: ``spawn`` puts
  ``SESSIONSTORE_TREE=<session>:<owner pid>:<owner start ticks>`` into each child's environment and
  descendants inherit it, so an escapee is found even after it was re-parented to init (the same
  cookie trick as Jenkins' ``BUILD_ID``; a process that clears its environment escapes it);

and, below each of those, their descendants. With the child subreaper on, escapees are also
re-parented to us, so they stay reapable.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping

from .._identity import ProcessIdentity
from ..errors import UnsafeSignalError
from ._os import StatInfo, environ_has, scan_processes
from ._pin import Pin

__all__ = ["MARKER_NAME", "discover", "marker_entry", "marker_value"]

MARKER_NAME = "SESSIONSTORE_TREE"


def marker_value(session_id: str, owner: ProcessIdentity) -> str:
    """The marker value for the children one owner process spawns for one session."""
    return f"{session_id}:{owner.pid}:{owner.start_ticks}"


def marker_entry(session_id: str, owner: ProcessIdentity) -> bytes:
    """The ``NAME=value`` environment entry, as found in ``/proc/<pid>/environ``."""
    return f"{MARKER_NAME}={marker_value(session_id, owner)}".encode()


def _same(info: StatInfo | None, pin: Pin) -> bool:
    return info is not None and info.start_ticks == pin.start_ticks


def _seeds(
    procs: Mapping[int, StatInfo],
    known: Mapping[int, Pin],
    marker: bytes | None,
) -> list[int]:
    me = os.getpid()
    my_pgrp = os.getpgrp()
    my_sid = os.getsid(0)
    # A group or session counts only when the pin leads it: a tracked process sitting in a
    # terminal's session must not drag the user's shell into its tree.
    pgids = {p.pgid for p in known.values() if p.pgid == p.pid and p.pid > 1}
    pgids.discard(my_pgrp)
    sids = {p.sid for p in known.values() if p.sid == p.pid and p.pid > 1}
    sids.discard(my_sid)
    seeds = [
        pid
        for pid, pin in known.items()
        if pid in procs and procs[pid].start_ticks == pin.start_ticks
    ]
    for info in procs.values():
        if info.pid == me:
            continue
        if (
            info.pgid in pgids
            or info.sid in sids
            or (marker is not None and not info.finished and environ_has(info.pid, marker))
        ):
            seeds.append(info.pid)
    return seeds


def discover(known: Mapping[int, Pin], *, marker: bytes | None) -> list[Pin]:
    """Pin the members of the known pins' trees that are not pinned yet.

    Args:
        known: the pins so far, by pid (roots and earlier finds).
        marker: the environment entry that marks our trees, or None to skip that search.

    Returns:
        New pins (source ``"descendant"``), each verified after its pidfd was opened. Zombies
        are left out unless they are our own children (then someone must reap them: us).
    """
    procs = scan_processes()
    me = os.getpid()
    children: defaultdict[int, list[int]] = defaultdict(list)
    for info in procs.values():
        children[info.ppid].append(info.pid)
    members: set[int] = set()
    stack = _seeds(procs, known, marker)
    while stack:
        pid = stack.pop()
        if pid in members or pid <= 1 or pid == me:
            continue
        members.add(pid)
        stack.extend(children.get(pid, ()))
    return list(_pin_new(procs, members.difference(known), me))


def _pin_new(procs: Mapping[int, StatInfo], pids: Iterable[int], me: int) -> Iterable[Pin]:
    for pid in sorted(pids):
        info = procs[pid]
        if info.finished and info.ppid != me:
            continue  # somebody else's zombie: it can never run again, and it is not ours to reap
        try:
            yield Pin.pin(pid, source="descendant", expected_start_ticks=info.start_ticks)
        except (ProcessLookupError, UnsafeSignalError):
            continue  # gone (or recycled) between the scan and the pidfd: not ours any more
