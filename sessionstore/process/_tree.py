"""Finding every process that belongs to the trees being ended.

PIDs alone miss processes: a process-group kill misses a grandchild that ``setsid``s, and
``psutil.children(recursive=True)`` loses descendants whose intermediate parent already exited.
A tree here is the union of

* the pinned roots and everything below them (by parent pid);
* every process in a process group or session that a pinned process leads (never ours);
* every process carrying the session's tree marker in its environment: ``spawn`` puts
  ``SESSIONSTORE_TREE=<session>:<owner pid>:<owner start ticks>`` into each child's environment
  and descendants inherit it, so an escapee is found even after it was re-parented elsewhere
  (the same cookie trick as Jenkins' ``BUILD_ID``). Markers of this process count, and those of
  earlier owners of the session that are verifiably dead; a live stranger's never do;
* with ``Scope.own_descendants``: every child of this process and everything below it. This
  process is a child subreaper, and an orphan is re-parented to its nearest subreaper ancestor,
  so every process a child ever started, directly or not, stays below us by parent links,
  however it ``setsid``s, double-forks or clears its environment: the complete list, by
  construction. Left out: children carrying another session's marker from this very process
  (another layer's), and children in our own process group without this session's marker (the
  application's own, started around the layer; an escapee would have to ``setpgid`` into our
  group on purpose to hide there).

A scan is one pass over ``/proc``. The freeze loop (see :mod:`._terminate`) uses *incremental*
scans, which read only processes not seen before, so a process that forks and exits in a loop
(a "PID hopper") is caught between hops; verification always uses full scans.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .._identity import IdentityStatus, ProcessIdentity, boot_id
from .._proc import (
    ProcessTable,
    ProcessUnreadableError,
    StatInfo,
    environ_value,
    list_pids,
    read_argv,
    read_children,
    read_children_lists,
    read_stat,
    scan,
)
from ..errors import UnsafeSignalError
from ._adopted import Adoptions, forked_elsewhere
from ._pin import Pin

__all__ = [
    "MARKER_NAME",
    "Scope",
    "TreeFinder",
    "descends_from_me",
    "marker_entry",
    "marker_member",
    "marker_value",
]

MARKER_NAME = "SESSIONSTORE_TREE"
_MARKER = MARKER_NAME.encode()
_PROBE_SPAN = 64  # pids read above the newest member in an incremental scan
_PROBE_ROUNDS = 1000  # bound on one chase up the pid numbers
_DEAD = (IdentityStatus.GONE, IdentityStatus.REUSED, IdentityStatus.ZOMBIE)
# A SIGSTOP that has not landed within this long is stuck behind a system call (D state, or a
# process not ours to stop); the walk goes on without it, and the full scans still verify.
_STOP_WAIT_S = 0.25
_STOPPED = ("T", "t", "Z", "X")  # stopped (by a signal, or traced), or can never run again


def marker_value(session_id: str, owner: ProcessIdentity) -> str:
    """The marker value for the children one owner process spawns for one session."""
    return f"{session_id}:{owner.pid}:{owner.start_ticks}"


def marker_entry(session_id: str, owner: ProcessIdentity) -> bytes:
    """The ``NAME=value`` environment entry, as found in ``/proc/<pid>/environ``."""
    return f"{MARKER_NAME}={marker_value(session_id, owner)}".encode()


@dataclass(frozen=True)
class Scope:
    """Where members of the trees are looked for, beyond the pinned roots' own trees.

    Attributes:
        session_id: the session whose tree markers count; None for no marker search.
        owner: this process's identity when it spawned children with its own marker (they
            count while it lives); None for the reaper, where only dead owners' markers count.
        own_descendants: every descendant of this process is a member (it is a subreaper).
    """

    session_id: str | None
    owner: ProcessIdentity | None = None
    own_descendants: bool = False


@dataclass
class _Marks:
    """Marker verdicts, cached per owner (one identity check each, not one per process)."""

    scope: Scope
    owners: dict[bytes, bool] = field(default_factory=dict)

    def classify(self, value: bytes) -> str:
        """``"member"``, ``"other_layer"`` (another session of this process) or ``"none"``."""
        try:
            sid, pid_s, ticks_s = value.decode("utf-8", "replace").rsplit(":", 2)
            pid, ticks = int(pid_s), int(ticks_s)
        except ValueError:
            return "none"
        mine = self.scope.owner
        if mine is not None and (pid, ticks) == (mine.pid, mine.start_ticks):
            return "member" if sid == self.scope.session_id else "other_layer"
        if sid != self.scope.session_id or pid <= 0 or ticks < 0:
            return "none"
        key = f"{pid}:{ticks}".encode()
        dead = self.owners.get(key)
        if dead is None:
            status = ProcessIdentity(pid=pid, start_ticks=ticks, boot_id=boot_id()).check()
            dead = self.owners[key] = status in _DEAD
        return "member" if dead else "none"


@dataclass
class Found:
    """What one scan found: new pins, and what it could not read."""

    new: list[Pin]
    alive: frozenset[int]  # live members seen in this scan (pinned before or now)
    zombies: frozenset[tuple[int, int]]  # (pid, start ticks) of members that exited unreaped
    unreadable: int  # processes listed but not readable (stat)
    environ_unreadable: int  # processes whose environment could not be read (marker unknown)


class TreeFinder:
    """Scans for members of the trees below ``known`` pins; remembers non-members between scans.

    Not thread-safe: one shutdown (or one reap) uses one finder.
    """

    def __init__(
        self, known: dict[int, Pin], scope: Scope, adoptions: Adoptions | None = None
    ) -> None:
        self.known = known
        self.scope = scope
        self.adoptions = Adoptions() if adoptions is None else adoptions
        self._marks = _Marks(scope)
        self._me = os.getpid()
        self._my_pgrp = os.getpgrp()
        self._my_sid = os.getsid(0)
        # Pids found not to be members, skipped by incremental scans. By pid alone, not identity:
        # reading each one's start ticks would cost the full scan this is meant to avoid; a
        # recycled pid missed here is caught by the full scans that verification uses.
        self._outside: set[int] = set()
        self._verdicts: dict[tuple[int, int], str] = {}
        self._walked: set[tuple[int, int]] = set()  # (pid, start ticks) seen by chase()
        self._my_zombies: set[int] = set()  # our zombie children seen by chase(), by pid
        self._own_lists: dict[str, bytes] = {}  # our threads' child lists at the last walk
        self.environ_unreadable = 0  # in the last clean full scan (set by the caller)

    def _marker(self, info: StatInfo) -> str | None:
        """The marker verdict for a process; None when its environment cannot be read."""
        key = (info.pid, info.start_ticks)
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        if info.finished:
            return "none"  # a zombie has no environment left, and can never run again
        try:
            value = environ_value(info.pid, _MARKER)
        except ProcessUnreadableError:
            return None
        verdict = "none" if value is None else self._marks.classify(value)
        self._verdicts[key] = verdict
        return verdict

    def find(self, *, full: bool = True, stop: bool = False) -> Found:
        """Scan once, pin the members not pinned yet, reap the zombies that are ours to reap.

        Args:
            full: read every process; False reads only processes not seen in earlier scans,
                plus the pids just above the newest member (a fork chain's next process is
                usually there, and listing ``/proc`` takes longer than a fork): fast, for the
                freeze loop; a full scan must confirm before anything is claimed.
            stop: SIGSTOP each new member the moment it is pinned, so it cannot fork or exec
                while the scan goes on.

        Returns:
            New pins (source ``"descendant"``, newest first), verified after their pidfd was
            opened, and the members seen. A member that is a zombie child of ours is reaped
            here (nobody else will: we are the subreaper), unless a ``Popen`` owns its status;
            it is reported in ``zombies`` (evidence that a member died since the last scan).
        """
        table = scan() if full else self._scan_new()
        procs = dict(table.procs)
        members, environ_unreadable = self._members(procs)
        for _ in range(0 if full else _PROBE_ROUNDS):
            if not self._probe(procs, members):
                break
            grown, environ_unreadable = self._members(procs)
            moved = max(grown, default=0) > max(members, default=0)
            members = grown
            if not moved:
                break
        for info in procs.values():
            if info.pid not in members:
                self._outside.add(info.pid)
        zombies = frozenset((pid, procs[pid].start_ticks) for pid in members if procs[pid].finished)
        for pid in members:
            info = procs[pid]
            if info.finished and info.ppid == self._me:
                self._reap(info)
            elif info.ppid != self._me:
                # Below another member now: if it is ever our child, we adopted it.
                self.adoptions.note(pid, info.start_ticks)
        # Newest first: in a fork chain the newest is the one still running.
        fresh = sorted(
            (pid for pid in members.difference(self.known) if not procs[pid].finished),
            reverse=True,
        )
        new = list(self._pin_new(procs, fresh, stop))
        return Found(
            new=new,
            alive=frozenset(pid for pid in members if not procs[pid].finished),
            zombies=zombies,
            unreadable=len(table.unreadable),
            environ_unreadable=environ_unreadable,
        )

    def chase(self, deadline: float, *, sig: int | None = None) -> list[Pin]:
        """Walk down the kernel's child lists, stopping every new member, until nothing is new.

        From this process (with ``scope.own_descendants``) and from every live pinned member,
        ``/proc/<pid>/task/*/children`` is read; each new member is pinned and sent SIGSTOP
        (then ``sig``, if given), and the walk repeats once every member found is seen stopped.
        A walk that finds nothing new (no new process, live or dead) after every member was
        seen stopped proves, for the subreaper's own tree, that no member is left running:

        * a process that is not pinned has a topmost unpinned ancestor whose parent is this
          process or a pinned member; it stays on that parent's list until its parent reaps
          it: we reap nothing during a walk, and a stopped member reaps nothing;
        * a stopped member cannot fork, so its list cannot grow behind the walk; ours grows
          only at the end, which a walk in progress still reaches;
        * a process that dies during the walk stays on its parent's list as a zombie, and its
          children are re-parented to us *before* it turns zombie: seeing the zombie counts as
          new, and the next walk reads our list again.

        One thing can still shorten our list during a walk: the exit watcher reaping a root
        (through its Popen). The kernel may then skip an entry of that one read, which is why
        the SIGKILL wave is followed by full scans until two in a row find nothing
        (``_settle_after_kill``): the walk makes catching certain, the scans verify.

        Rejected: listing ``/proc`` (about 1 ms here, while a Python process forks and exits
        in about as long: the old incremental scans lost a "PID hopper" in 0-3 rounds of 20).

        Returns:
            The new pins, in the order found (empty when the kernel offers no child lists).
        """
        found: list[Pin] = []
        live = [p for p in self.known.values() if not p.has_exited()]
        self._await_stopped(live, min(deadline, time.monotonic() + _STOP_WAIT_S))
        while time.monotonic() < deadline:
            new, seen_new = self._walk_children()
            for pin in new:
                if sig is not None:
                    pin.send(sig)
            found.extend(new)
            if not seen_new:
                return found
            self._await_stopped(new, min(deadline, time.monotonic() + _STOP_WAIT_S))
        return found

    def _walk_children(self) -> tuple[list[Pin], bool]:
        """One walk down the child lists; the new pins, and whether anything new was seen."""
        new: list[Pin] = []
        seen_new = False
        parents = [self._me] if self.scope.own_descendants else []
        parents.extend(pid for pid, pin in self.known.items() if not pin.has_exited())
        done: set[int] = set()
        while parents:
            parent = parents.pop()
            if parent in done:
                continue
            done.add(parent)
            try:
                children = self._own_children() if parent == self._me else read_children(parent)
            except ProcessUnreadableError:
                continue
            if children is None:
                continue
            pin_of_parent = self.known.get(parent)
            if pin_of_parent is not None and pin_of_parent.has_exited():
                continue  # it exited while we read: its list may name a stranger's children
            for pid in children:
                if parent == self._me and pid in self._my_zombies:
                    continue
                try:
                    info = read_stat(pid)
                except ProcessUnreadableError:
                    info = None
                if info is None:
                    if parent == self._me:
                        self._own_lists = {}  # not looked at: the next walk reads all of ours
                    continue
                if parent == self._me and info.finished:
                    self._my_zombies.add(pid)
                key = (pid, info.start_ticks)
                pinned = self.known.get(pid)
                if pinned is not None and pinned.start_ticks == info.start_ticks:
                    if not pinned.has_exited():
                        parents.append(pid)
                    continue
                if key in self._walked:
                    continue
                self._walked.add(key)
                if (
                    parent == self._me
                    and info.pgid == self._my_pgrp
                    and (info.finished or self._marker(info) != "member")
                ):
                    # The application's own child (see _members): its comings and goings
                    # are not the trees', and an app that keeps starting subprocesses must
                    # not keep the walk going until the deadline.
                    continue
                seen_new = True
                if info.finished:
                    continue  # a zombie: its children, if any, are on our list now
                if parent == self._me and not self._adopted_child(info):
                    continue  # the application's own child (see _members)
                pin = self._pin_one(info, stop=True)
                if pin is not None:
                    new.append(pin)
                    parents.append(pid)
        return new, seen_new

    def _own_children(self) -> list[int] | None:
        """Our children for this walk to look at, newest first.

        A PID hopper leaves thousands of zombies on our list (nothing reaps during a
        shutdown), and a walk that went over all of them, about a millisecond, let the live one
        hop on every time: it escaped 1 shutdown in 4 here. So while each of our lists only
        grew since the last walk (the kernel adds at the end and removes only on reaping; see
        :func:`read_children_lists`), only the new end is looked at: the processes on the rest
        were looked at before and are the same. Otherwise, all of them but our zombies already
        seen (a zombie stays the same process until reaped, which takes it off the list).
        Newest first: an orphan joins the end, so a hopper's live self is read before it hops.

        Raises:
            ProcessUnreadableError: a list could not be read.
        """
        lists = read_children_lists(self._me)
        if lists is None:
            return None
        before = self._own_lists
        # Each pid is written with a space after it, so a prefix ends at a whole pid.
        grown = all(
            raw.startswith(old) and old[-1:] in (b"", b" ")
            for tid, raw in lists.items()
            for old in (before.get(tid, b""),)
        )
        self._own_lists = lists
        if grown:
            children = [
                int(part)
                for tid, raw in lists.items()
                for part in raw[len(before.get(tid, b"")) :].split()
            ]
        else:
            children = [int(part) for raw in lists.values() for part in raw.split()]
            self._my_zombies.intersection_update(children)
        children.reverse()
        return children

    def _adopted_child(self, info: StatInfo) -> bool:
        """Whether a live child of this process is a member (the rule of :meth:`_members`)."""
        if info.pgid == self._my_pgrp:
            return self._marker(info) == "member"
        return self._marker(info) != "other_layer"

    def _pin_one(self, info: StatInfo, *, stop: bool) -> Pin | None:
        """Pin one found member (verified after the pidfd is open); SIGSTOP it if asked."""
        try:
            pin = Pin.pin(
                info.pid, source="descendant", expected_start_ticks=info.start_ticks, argv=[]
            )
        except (ProcessLookupError, UnsafeSignalError, ProcessUnreadableError):
            return None  # gone (or recycled) between the read and the pidfd: not ours any more
        if stop:
            pin.send(signal.SIGSTOP)
        pin.argv = read_argv(info.pid) or []  # for humans; after the stop, so it cannot hop
        self._judge_adopted(pin, info)
        self.known[info.pid] = pin
        return pin

    def _judge_adopted(self, pin: Pin, info: StatInfo) -> None:
        """Mark a new pin adopted when there is evidence we did not fork it (``._adopted``)."""
        if (
            info.ppid != self._me
            or forked_elsewhere(info, self._my_sid)
            or self._marker(info) == "member"
            or self.adoptions.is_adopted(info)
        ):
            pin.adopted = True
            self.adoptions.note(info.pid, info.start_ticks)

    def _await_stopped(self, pins: list[Pin], deadline: float) -> None:
        """Wait (bounded) until each pin is stopped or dead: a SIGSTOP lands asynchronously.

        There is no event for "a process I do not parent has stopped" (``waitid(WSTOPPED)``
        serves parents only), so this re-reads ``/proc`` with a short, growing pause; a stop
        lands within microseconds unless the process is in the middle of a system call.
        """
        pause = 0.00005
        waiting = list(pins)
        while waiting:
            still = []
            for pin in waiting:
                try:
                    info = read_stat(pin.pid)
                except ProcessUnreadableError:
                    continue
                if info is None or info.start_ticks != pin.start_ticks or info.state in _STOPPED:
                    continue
                still.append(pin)
            waiting = still
            now = time.monotonic()
            if not waiting or now >= deadline:
                return
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.005)

    def _members(self, procs: Mapping[int, StatInfo]) -> tuple[set[int], int]:
        """The members among ``procs`` (pids), and how many environments could not be read."""
        known = self.known
        led_groups = {p.pgid for p in known.values() if p.pgid == p.pid and p.pid > 1}
        led_groups.discard(self._my_pgrp)
        led_sessions = {p.sid for p in known.values() if p.sid == p.pid and p.pid > 1}
        led_sessions.discard(self._my_sid)
        children: defaultdict[int, list[int]] = defaultdict(list)
        for info in procs.values():
            children[info.ppid].append(info.pid)
        seeds = [pid for pid, pin in known.items() if pid in procs and _same(procs[pid], pin)]
        environ_unreadable = 0
        for info in procs.values():
            if info.pid == self._me:
                continue
            if info.pgid in led_groups or info.sid in led_sessions:
                seeds.append(info.pid)
                continue
            verdict = self._marker(info)
            if verdict is None:
                environ_unreadable += 1
            # A child of ours in our own process group with no marker of this session is one
            # the application started around the layer (a ``subprocess.run``, a multiprocessing
            # worker): not this session's. Escapees never land there: ``spawn`` puts each child
            # in a group of its own, and joining ours would take a deliberate setpgid.
            adopted = (
                info.ppid == self._me
                and self.scope.own_descendants
                and info.pgid != self._my_pgrp
                and verdict != "other_layer"
            )
            if verdict == "member" or adopted:
                seeds.append(info.pid)
        members: set[int] = set()
        stack = seeds
        while stack:
            pid = stack.pop()
            if pid in members or pid <= 1 or pid == self._me:
                continue
            members.add(pid)
            stack.extend(children.get(pid, ()))
        return members, environ_unreadable

    def _probe(self, procs: dict[int, StatInfo], members: set[int]) -> bool:
        """Read the pids just above the newest member; True when that found a new process."""
        if not members:
            return False
        top = max(members)
        added = False
        for pid in range(top + 1, top + _PROBE_SPAN):
            if pid in procs or pid in self._outside:
                continue
            try:
                info = read_stat(pid)
            except ProcessUnreadableError:
                continue
            if info is None or info.ppid == 2:
                continue
            procs[pid] = info
            added = True
        return added

    def _reap(self, info: StatInfo) -> None:
        """Reap our zombie child ``info`` when we adopted it; never one this process forked.

        A root (spawned, tracked, recorded) is collected by the exit watcher, through its Popen
        or with ``WNOWAIT``, so whoever holds a Popen for it still reads the true status; any
        other child is reaped only on evidence that we did not fork it (:mod:`._adopted`).
        """
        pin = self.known.get(info.pid)
        if pin is not None and pin.start_ticks == info.start_ticks:
            if pin.source == "descendant":
                pin.collect(reap_adopted=pin.adopted)
            return
        self.adoptions.reap(info)

    def _scan_new(self) -> ProcessTable:
        """Only processes not judged before, plus the pinned ones (their children's parents)."""
        procs: dict[int, StatInfo] = {}
        unreadable: set[int] = set()
        outside = self._outside
        for pid in list_pids():
            if pid in outside:
                continue
            try:
                info = read_stat(pid)
            except ProcessUnreadableError:
                unreadable.add(pid)
                continue
            if info is None or info.pid == 2 or info.ppid == 2:
                continue
            procs[pid] = info
        return ProcessTable(procs=procs, unreadable=frozenset(unreadable))

    def _pin_new(
        self, procs: Mapping[int, StatInfo], pids: Iterable[int], stop: bool
    ) -> Iterable[Pin]:
        for pid in pids:
            info = procs[pid]
            if info.finished and info.ppid != self._me:
                continue  # somebody else's zombie: it can never run again, and not ours to reap
            try:
                pin = Pin.pin(
                    pid, source="descendant", expected_start_ticks=info.start_ticks, argv=[]
                )
            except (ProcessLookupError, UnsafeSignalError, ProcessUnreadableError):
                continue  # gone (or recycled) between the scan and the pidfd: not ours any more
            if stop:
                pin.send(signal.SIGSTOP)
            pin.argv = read_argv(pid) or []  # for humans; after the stop, so it cannot hop
            self._judge_adopted(pin, info)
            self.known[pid] = pin
            yield pin


def marker_member(scope: Scope) -> Callable[[StatInfo], bool]:
    """A test for "this live process carries the scope's tree marker" (verdicts cached)."""
    marks = _Marks(scope)

    def member(info: StatInfo) -> bool:
        try:
            value = environ_value(info.pid, _MARKER)
        except ProcessUnreadableError:
            return False
        return value is not None and marks.classify(value) == "member"

    return member


def _same(info: StatInfo, pin: Pin) -> bool:
    return info.start_ticks == pin.start_ticks


def descends_from_me(pid: int) -> bool:
    """True when ``pid`` is a descendant of this process (its parent chain reaches us now)."""
    me = os.getpid()
    for _ in range(256):  # bounded: a parent chain read while it changes could loop
        try:
            info = read_stat(pid)
        except ProcessUnreadableError:
            return False
        if info is None or info.ppid <= 1:
            return False
        if info.ppid == me:
            return True
        pid = info.ppid
    return False
