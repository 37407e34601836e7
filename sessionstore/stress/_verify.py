"""What the stress harness checks after the storm: acks against the database, stderr, orphans.

Each piece takes plain paths and ids, so a test can hand it a constructed situation (a missing
op, a living orphan) and see it detected, without running a storm.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from .. import _queries
from .._identity import IdentityStatus, ProcessIdentity, boot_id, read_process_info
from .._models import ChildState
from .._proc import wait_pidfds
from .._store import ReadLease, SessionStore

__all__ = [
    "RUN_ENV",
    "AckCounter",
    "AckRecord",
    "DbFindings",
    "StderrFindings",
    "Tracked",
    "end_survivors",
    "read_acks",
    "run_processes",
    "scan_stderr",
    "verify_database",
]

RUN_ENV = "SESSIONSTORE_STRESS_RUN"
"""Environment variable every process of a run inherits: how stray descendants are found."""

_BUSY = re.compile(r"busyerror|database is locked|sqlite_busy|still locked", re.IGNORECASE)
_TRACEBACK = "Traceback (most recent call last)"
_HANG_DUMP = "Timeout ("  # faulthandler.dump_traceback_later's header
_HANG_DUMP_LINES = 40
_ACK_KINDS = ("S", "E", "H", "C")


@dataclass
class AckRecord:
    """What one worker's ack file says it was told."""

    session_id: str | None = None
    child_pids: list[int] = field(default_factory=list)
    events: set[str] = field(default_factory=set)
    checkpoints: set[str] = field(default_factory=set)
    heartbeats: int = 0
    last_heartbeat: float | None = None  # the newest acknowledged heartbeat was made after this
    errors: list[str] = field(default_factory=list)
    shutdown_at: float | None = None

    @property
    def acked(self) -> int:
        """Acknowledged writes: session, events, heartbeats, checkpoints."""
        return (
            (self.session_id is not None)
            + len(self.events)
            + self.heartbeats
            + len(self.checkpoints)
        )


def read_acks(path: str) -> AckRecord:
    """Parse an ack file (a torn last line, from a process killed mid-write, is ignored)."""
    rec = AckRecord()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return rec
    for line in lines[:-1]:  # the part after the last newline is torn or empty
        kind, _, rest = line.partition(" ")
        if kind == "S":
            rec.session_id = rest
        elif kind == "K":
            rec.child_pids.append(int(rest))
        elif kind == "E":
            rec.events.add(rest)
        elif kind == "C":
            rec.checkpoints.add(rest)
        elif kind == "H":
            rec.heartbeats += 1
            rec.last_heartbeat = float(rest)
        elif kind == "X":
            rec.errors.append(rest)
        elif kind == "T":
            rec.shutdown_at = float(rest)
    return rec


class AckCounter:
    """Counts acknowledged writes in growing ack files, reading only what is new each time."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._offsets = dict.fromkeys(paths, 0)
        self._partial = dict.fromkeys(self._offsets, b"")
        self.total = 0

    def update(self) -> int:
        """Read what was appended since the last call; return the running total."""
        for path, offset in self._offsets.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            self._offsets[path] = offset + len(chunk)
            data = self._partial[path] + chunk
            *lines, self._partial[path] = data.split(b"\n")
            self.total += sum(1 for ln in lines if ln[:1].decode("ascii", "ignore") in _ACK_KINDS)
        return self.total


@dataclass
class StderrFindings:
    """What one worker printed on stderr that matters."""

    tracebacks: int = 0
    busy_lines: int = 0
    tail: list[str] = field(default_factory=list)
    hang_dump: list[str] = field(default_factory=list)  # faulthandler's stacks, if it hung


def scan_stderr(path: str, tail: int = 6) -> StderrFindings:
    """Count tracebacks and BUSY/locked reports in a worker's stderr; keep its last lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.rstrip() for ln in f]
    except FileNotFoundError:
        return StderrFindings()
    dump: list[str] = []
    for i, ln in enumerate(lines):
        if ln.startswith(_HANG_DUMP):
            dump = [x for x in lines[i + 1 : i + 1 + _HANG_DUMP_LINES] if x.strip()]
            break
    return StderrFindings(
        tracebacks=sum(_TRACEBACK in ln for ln in lines),
        busy_lines=sum(bool(_BUSY.search(ln)) for ln in lines),
        tail=[ln for ln in lines if ln.strip()][-tail:],
        hang_dump=dump,
    )


@dataclass
class SessionFindings:
    """One worker's acknowledged writes checked against the database."""

    status: str | None = None
    missing: int = 0
    child_rows_running: int = 0


@dataclass
class DbFindings:
    """The database after the storm."""

    integrity: str
    replayed: int
    sessions: list[SessionFindings]


def verify_database(db_path: str, records: list[AckRecord]) -> DbFindings:
    """Open the store (which replays the journal), then check every acknowledged write.

    A write counts as present when its row is there; a heartbeat when the session's heartbeat
    time is at least the time the newest acknowledged one was made.

    Raises:
        SessionStoreError: the database cannot be opened.
    """
    store = SessionStore.open(db_path)
    try:
        replayed = store.open_replay.applied
        with store.lease("stress-verify") as lease:
            found_problems = _queries.integrity_check(lease)
            integrity = "ok" if found_problems == ["ok"] else "; ".join(found_problems[:5])
            found = [_check_session(lease, rec) for rec in records]
    finally:
        store.close()
    return DbFindings(integrity=integrity, replayed=replayed, sessions=found)


def _check_session(lease: ReadLease, rec: AckRecord) -> SessionFindings:
    if rec.session_id is None:
        return SessionFindings()
    sid = rec.session_id
    session = _queries.get_session(lease, sid)
    if session is None:
        return SessionFindings(missing=rec.acked)
    heartbeat_at = session.heartbeat_at
    events = _queries.event_op_ids(lease, sid)
    ckpts = _queries.checkpoint_ids(lease, sid)
    missing = len(rec.events - events) + len(rec.checkpoints - ckpts)
    if rec.last_heartbeat is not None and (
        heartbeat_at is None or heartbeat_at < rec.last_heartbeat
    ):
        missing += 1
    states = _queries.child_states(lease, sid).values()
    running = sum(1 for state in states if state is ChildState.RUNNING)
    return SessionFindings(status=session.status.value, missing=missing, child_rows_running=running)


# --------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Tracked:
    """A descendant of a worker, identified for good by its start ticks."""

    pid: int
    start_ticks: int
    worker: int  # -1 when found by the run marker alone

    def identity(self) -> ProcessIdentity:
        """Its ``(pid, start_ticks, boot_id)``."""
        return ProcessIdentity(pid=self.pid, start_ticks=self.start_ticks, boot_id=boot_id())

    def alive(self) -> bool:
        """True while this very process runs (a zombie or a reused pid is not it)."""
        return self.identity().check() is IdentityStatus.ALIVE


def track(pid: int, worker: int) -> Tracked | None:
    """Capture ``pid``'s identity now; None when it is already gone."""
    try:
        info = read_process_info(pid)
    except PermissionError:
        return None
    if info is None or info.state in ("Z", "X"):
        return None
    return Tracked(pid=pid, start_ticks=info.start_ticks, worker=worker)


def run_processes(run_id: str, exclude: Iterable[int] = ()) -> list[Tracked]:
    """Every living process that carries this run's marker in its environment."""
    skip = {os.getpid(), *exclude}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(RUN_ENV) == run_id:
                t = track(proc.pid, -1)
                if t is not None:
                    found.append(t)
    return found


def _wait_gone(procs: list[Tracked], timeout: float) -> list[Tracked]:
    """Wait up to ``timeout`` for ``procs`` to end; return those still alive.

    With pidfds (Linux) this sleeps in ``select`` until a process exits; elsewhere psutil
    polls. A pidfd is opened *then* the identity re-checked, so it cannot pin a stranger.
    """
    if not hasattr(os, "pidfd_open"):
        handles = []
        for t in procs:
            with contextlib.suppress(psutil.Error):
                handles.append((t, psutil.Process(t.pid)))
        _gone, alive = psutil.wait_procs([h for _, h in handles], timeout=timeout)
        alive_pids = {p.pid for p in alive}
        return [t for t, _ in handles if t.pid in alive_pids and t.alive()]
    fds: dict[int, Tracked] = {}
    try:
        for t in procs:
            try:
                fd = os.pidfd_open(t.pid)
            except OSError:
                continue  # gone already
            if t.alive():
                fds[fd] = t
            else:
                os.close(fd)
        pending = wait_pidfds(fds, time.monotonic() + timeout)
        return [fds[fd] for fd in pending if fds[fd].alive()]
    finally:
        for fd in fds:
            os.close(fd)


def _kill(t: Tracked) -> None:
    """SIGKILL ``t`` if, and only if, its pid still names that very process."""
    if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
        try:
            fd = os.pidfd_open(t.pid)
        except OSError:
            return
        try:
            if t.alive():  # verified after the pidfd pinned whoever holds the pid
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
        return
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(t.pid)
        if t.alive():
            proc.kill()  # psutil re-checks (pid, create time) before signalling


def end_survivors(
    procs: list[Tracked], *, settle_s: float, kill_wait_s: float = 5.0
) -> tuple[list[Tracked], list[Tracked]]:
    """Give ``procs`` ``settle_s`` to end, then SIGKILL the rest (identity re-checked).

    Returns:
        ``(orphans, left)``: the processes still alive after ``settle_s``, and those still
        alive even after SIGKILL (zombies of a live parent count as ended).
    """
    orphans = _wait_gone([t for t in procs if t.alive()], settle_s)
    for t in orphans:
        _kill(t)
    left = _wait_gone(orphans, kill_wait_s)
    return orphans, left
