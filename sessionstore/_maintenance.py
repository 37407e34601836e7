"""Store maintenance: prune ended sessions, vacuum the file, back it up online.

Each operation keeps the store's promises:

- **prune** is an op (:class:`~sessionstore._ops.PruneSessions`): applied in one
  ``BEGIN IMMEDIATE`` bounded by the write deadline, queued while the store closes, journaled
  after it closed, idempotent on replay. It selects by a cutoff, never by "now", so whenever it
  is applied it deletes only sessions whose every record is older than the cutoff: nothing
  acknowledged after the cutoff is ever deleted. Rejected alternative: read the candidates,
  then send one ``DeleteSession`` each; a write landing between the read and the deletes (a
  resume, an event) would be lost.
- **vacuum** rewrites the file on its own connection under the write lock, bounded by the
  write deadline for the lock; a peer's write that waits past its own deadline meanwhile is
  journaled by that peer, never lost.
- **backup** copies the database with SQLite's backup API in one step, inside one read
  transaction: a consistent snapshot holding every write committed before it began, taken
  while other processes keep writing (WAL readers never block writers). The copy is made under
  a temporary name in the destination's directory and published with ``link(2)`` (refuses an
  existing name, and never follows a symlink planted there) or, with ``force``, ``rename(2)``
  (replaces the name itself, never a symlink's target).

Tombstones (:class:`~sessionstore._ops.DeleteSession`) let a deletion win over an older op
applied late. One may go once no op older than it can still be applied. Such an op lives in
one of three places: the journal beside the database (read here: its oldest op bounds the
cut), a live process's pending queue or retry loop (bounded by its ``write_deadline_s`` and
``close_timeout_s``, each at most an hour, so :data:`TOMBSTONE_HORIZON_S` is a day), or a file
kept aside for a person (``-ops.rejected.jsonl``), whose ops are never applied on their own.
A process stopped (SIGSTOP) for longer than the horizon while holding an op is the one case the
rule cannot see; its late op can then recreate rows the deletion removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import apsw
from pydantic import BaseModel, ConfigDict

from ._config import StoreConfig
from ._connection import RetryPolicy, open_connection, translate_open_error
from ._files import journal_path, shm_path, wal_path
from ._forkgate import FORK_GATE
from ._models import Checkpoint, ReplayReport, SessionStatus
from ._ops import Batch, PruneSessions, SetOwner, SetStatus, owner_fields
from ._queries import MAX_PAGE, find_checkpoints
from .errors import StoreClosedError, StoreIOError, StoreReadOnlyError


class SessionStore(Protocol):
    """What these operations use of :class:`sessionstore.SessionStore`.

    Typed here, not imported: the store imports this module, and the package has no import
    cycle (not even a type-only one).
    """

    path: str
    config: StoreConfig
    read_only: bool

    @property
    def journal_path(self) -> str: ...

    def replay(self) -> ReplayReport: ...

    def lease(self, borrower: str = ...) -> contextlib.AbstractContextManager[Any]: ...

    def _write(self, op: Any) -> Any: ...

    def _run_read(self, fn: Callable[[apsw.Connection], T], borrower: str) -> T: ...


__all__ = [
    "TOMBSTONE_HORIZON_S",
    "BackupReport",
    "PruneReport",
    "VacuumReport",
    "backup",
    "find_readable",
    "prune_sessions",
    "resume_with_owner",
    "vacuum",
]

log = logging.getLogger("sessionstore")

T = TypeVar("T")

TOMBSTONE_HORIZON_S = 86_400.0
"""A tombstone younger than this is always kept (see the module docstring)."""


class PruneReport(BaseModel):
    """What :meth:`SessionStore.prune_sessions` did."""

    model_config = ConfigDict(frozen=True)

    before: float
    sessions: int  # sessions deleted, with everything in them
    tombstones: int  # tombstones dropped (older than ``tombstones_before``)
    tombstones_before: float | None
    complete: bool  # False: the deadline came first (run it again) or it was journaled
    journaled: bool  # the store was closing or closed, or locked: the op was queued/journaled


class VacuumReport(BaseModel):
    """What :meth:`SessionStore.vacuum` did (bytes of the database file plus its WAL)."""

    model_config = ConfigDict(frozen=True)

    bytes_before: int
    bytes_after: int
    seconds: float


class BackupReport(BaseModel):
    """What :meth:`SessionStore.backup` wrote."""

    model_config = ConfigDict(frozen=True)

    path: str
    bytes: int
    pages: int
    seconds: float
    integrity: str  # ``PRAGMA quick_check`` of the copy: "ok", or SQLite's first complaint


# ---------------------------------------------------------------------------------- prune


def oldest_journaled_ts(journal_path: str) -> float | None:
    """The oldest op time in the journal file (None: empty or missing).

    Read without the journal's lock: appends are one ``write`` each, so a reader sees whole
    lines plus at most a torn tail, which is skipped (its op was never acknowledged as
    journaled).
    """
    try:
        with open(journal_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    oldest: float | None = None
    for line in raw.split(b"\n"):
        try:
            ts = float(json.loads(line)["ts"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn tail or an unreadable line (replay keeps those aside)
        if math.isfinite(ts):
            oldest = ts if oldest is None else min(oldest, ts)
    return oldest


def prune_sessions(
    store: SessionStore,
    before: float,
    *,
    batch: int = 500,
    deadline_s: float | None = None,
    tombstone_horizon_s: float = TOMBSTONE_HORIZON_S,
) -> PruneReport:
    """Delete every session that ended before ``before`` (see :class:`PruneSessions`).

    The journal is replayed first, so an op already journaled for an ended session lands
    before the prune judges that session. Then one op per ``batch`` sessions, until none is
    left or ``deadline_s`` has passed.

    Raises:
        ValueError: ``before`` not a finite time, or a bad ``batch``/horizon.
        StoreReadOnlyError: the store was opened read-only; nothing changed.
        StoreBusyError: the journal could not be replayed within the write deadline;
            nothing changed by the prune.
    """
    if not math.isfinite(before) or not before >= 0:
        raise ValueError(f"before must be a finite epoch time, not {before!r}")
    if not 0 <= tombstone_horizon_s < math.inf:
        raise ValueError("tombstone_horizon_s must be finite and >= 0")
    if store.read_only:
        raise StoreReadOnlyError(store.path, "prune")
    with contextlib.suppress(StoreClosedError):
        store.replay()  # closed: the prune op is journaled after everything already there
    now = time.time()
    cut = now - tombstone_horizon_s
    oldest = oldest_journaled_ts(store.journal_path)
    tombstones_before = cut if oldest is None else min(cut, oldest)
    end = None if deadline_s is None else time.monotonic() + deadline_s
    sessions = dropped = 0
    first = True
    while True:
        op = PruneSessions(
            before=before, limit=batch, tombstones_before=tombstones_before if first else None
        )
        first = False
        result = store._write(op)
        if not isinstance(result, tuple):  # queued or journaled: applied later, in full
            return PruneReport(
                before=before,
                sessions=sessions,
                tombstones=dropped,
                tombstones_before=tombstones_before,
                complete=False,
                journaled=True,
            )
        n, d = result
        sessions += n
        dropped += d
        if n < batch:
            complete = True
            break
        if end is not None and time.monotonic() >= end:
            complete = False
            break
    if sessions or dropped:
        log.info("pruned %d session(s), %d tombstone(s) from %s", sessions, dropped, store.path)
    return PruneReport(
        before=before,
        sessions=sessions,
        tombstones=dropped,
        tombstones_before=tombstones_before,
        complete=complete,
        journaled=False,
    )


# ---------------------------------------------------------------------------------- owner


def resume_with_owner(store: SessionStore, session_id: str, *, claim: bool) -> None:
    """Make a session ACTIVE and record its new owner, in one transaction (one op).

    ``claim``: this process is the owner from now on (an orchestrator, a ``run`` wrapper
    taking the session over); otherwise the owner is cleared (a short-lived tool resuming it
    for an orchestrator to start later). Either way the dead owner is gone, so the reaper does
    not take the resumed session for an orphan.

    Raises:
        SessionNotFoundError: no such session (store open).
        InvalidTransitionError: the session cannot be resumed (completed); nothing changed.
        StoreReadOnlyError: the store was opened read-only.
    """
    ts = time.time()
    owner = owner_fields() if claim else {}
    store._write(
        Batch(
            ts=ts,
            ops=[
                SetStatus(ts=ts, session_id=session_id, status=SessionStatus.ACTIVE),
                SetOwner(ts=ts, session_id=session_id, **owner),
            ],
        )
    )


# ---------------------------------------------------------------------------------- reading


def find_readable(
    store: SessionStore,
    session_id: str,
    *,
    namespace: str | None,
    limit: int | None,
    check: Callable[[Checkpoint], str | None] | None = None,
) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
    """The newest ``limit`` checkpoints whose JSON reads, and the ones that did not.

    A corrupt record (a row whose JSON text was damaged on disk or written by another tool)
    must not hide the history around it: it is skipped and reported, and the page is filled
    from older rows so ``limit`` readable ones come back while there are that many. ``check``
    may refuse more rows (it returns the reason, or None to keep the row).

    Returns:
        ``(checkpoints newest first, [(checkpoint id, reason skipped)])``; each skipped row
        is also logged at warning level.

    Raises:
        ValueError: ``limit`` out of range.
        StoreClosedError: the store is closing or closed.
    """
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be within 1..{MAX_PAGE}")
    corrupt: list[tuple[str, str]] = []
    found: list[Checkpoint] = []
    before: str | None = None
    while True:
        want = None if limit is None else limit - len(found)

        def read(
            conn: apsw.Connection, want: int | None = want, after: str | None = before
        ) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
            bad: list[tuple[str, str]] = []  # per attempt: a read retried on BUSY starts afresh
            page = find_checkpoints(
                conn,
                session_id=session_id,
                namespace=namespace,
                name=None,
                checkpoint_id=None,
                metadata=None,
                run_id=None,
                before=after,
                limit=want,
                corrupt=bad,
            )
            if check is None:
                return page, bad
            kept = []
            for cp in page:
                why = check(cp)
                if why is None:
                    kept.append(cp)
                else:
                    bad.append((cp.id, why))
            return kept, bad

        page, skipped = store._run_read(read, "find_checkpoints")
        found.extend(page)
        corrupt.extend(skipped)
        if want is None or not skipped or len(page) >= want or len(page) + len(skipped) < want:
            break  # all read, a full page, or no older rows left
        # Some rows of this page were corrupt: read on below the oldest row it covered.
        before = min([c.id for c in page] + [cid for cid, _ in skipped])
    for cid, why in corrupt:
        log.warning("checkpoint %s of session %s skipped, unreadable: %s", cid, session_id, why)
    return found, corrupt


# ---------------------------------------------------------------------------------- vacuum


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def vacuum(store: SessionStore) -> VacuumReport:
    """Rebuild the database file compactly (``VACUUM``), then truncate the WAL.

    Raises:
        StoreReadOnlyError: the store was opened read-only; nothing changed.
        StoreClosedError: the store is closing or closed.
        StoreBusyError: the write lock stayed held past the write deadline; nothing changed.
        StoreIOError: the disk failed (no room for the rebuilt copy); the database is as before.
    """
    if store.read_only:
        raise StoreReadOnlyError(store.path, "vacuum")
    start = time.monotonic()
    before = _size(store.path) + _size(wal_path(store.path))
    policy = RetryPolicy(store.config.write_deadline_s)
    # A gate lease: close() waits for the vacuum (up to its timeout) instead of racing it.
    with store.lease("vacuum"):
        conn = open_connection(store.path, store.config, policy)
        try:

            def run() -> None:
                with FORK_GATE.section():
                    conn.execute("VACUUM").fetchall()

            try:
                policy.call(run, path=store.path, operation="vacuum")
                with FORK_GATE.section(), contextlib.suppress(apsw.BusyError):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except (apsw.FullError, apsw.IOError, apsw.CantOpenError) as err:
                raise StoreIOError(store.path, "vacuum", f"{type(err).__name__}: {err}") from err
        finally:
            with FORK_GATE.section():
                conn.close()
    return VacuumReport(
        bytes_before=before,
        bytes_after=_size(store.path) + _size(wal_path(store.path)),
        seconds=time.monotonic() - start,
    )


# ---------------------------------------------------------------------------------- backup


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cleanup(tmp: str) -> None:
    # The copy's own side files, should SQLite have left any (rollback journal, WAL, index).
    for path in (tmp, f"{tmp}-journal", wal_path(tmp), shm_path(tmp)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def backup(store: SessionStore, dest: str, *, force: bool = False) -> BackupReport:
    """Copy the database to ``dest`` while other processes keep writing.

    The copy is one self-contained file (rollback journal mode, no ``-wal``) that
    :meth:`SessionStore.open` opens like the original. It holds every write committed before
    the call began, and is consistent (one read transaction).

    Args:
        store: an open store (read-only is fine: a backup only reads).
        dest: the file to write.
        force: replace an existing file at ``dest`` (the name, never a symlink's target).

    Raises:
        FileExistsError: ``dest`` exists (or appeared meanwhile) and ``force`` is False;
            nothing written there.
        IsADirectoryError: ``dest`` is a directory.
        ValueError: ``dest`` is the database itself or one of its side files.
        StoreClosedError: the store is closing or closed.
        StoreBusyError: the database stayed locked past the deadline; nothing published.
        StoreIOError: the copy could not be written (disk full ...); nothing published, the
            temporary file removed.
    """
    start = time.monotonic()
    dest = os.path.abspath(dest)
    real_db = os.path.realpath(store.path)
    own = {real_db, wal_path(real_db), shm_path(real_db), journal_path(real_db)}
    if os.path.realpath(dest) in own:
        raise ValueError(f"{dest} is the database itself or one of its files")
    if os.path.isdir(dest) and not os.path.islink(dest):
        raise IsADirectoryError(dest)
    if os.path.lexists(dest) and not force:
        raise FileExistsError(f"{dest} exists (pass force to replace it)")
    directory, base = os.path.split(dest)
    tmp = os.path.join(directory, f".{base}.backup-{os.getpid()}-{secrets.token_hex(4)}")
    # O_EXCL | O_NOFOLLOW: our own new file, never something planted under the temporary name.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        pages, integrity = _copy(store, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)  # EEXIST if anything (a symlink too) took the name meanwhile
            os.unlink(tmp)
        _fsync_dir(directory)
    except BaseException:
        _cleanup(tmp)
        raise
    return BackupReport(
        path=dest,
        bytes=_size(dest),
        pages=pages,
        seconds=time.monotonic() - start,
        integrity=integrity,
    )


def _copy(store: SessionStore, tmp: str) -> tuple[int, str]:
    try:
        with FORK_GATE.section():
            dst = apsw.Connection(tmp, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as err:
        raise translate_open_error(tmp, err, "backup") from err
    try:

        def run(src: apsw.Connection) -> int:
            # One step for every page: one read transaction on the source, so the copy is one
            # snapshot (a stepwise copy restarts whenever a peer commits). Runs inside the fork
            # gate (the store's read path).
            with dst.backup("main", src, "main") as copy:
                copy.step(-1)
                pages = int(copy.page_count)
            return pages

        pages = store._run_read(run, "backup")
        with FORK_GATE.section():
            # A self-contained file: the copy carries the source's WAL flag in its header.
            dst.pragma("journal_mode", "delete")
            rows = dst.execute("PRAGMA quick_check").fetchall()
        integrity = "; ".join(str(r[0]) for r in rows)
    except (apsw.FullError, apsw.IOError, apsw.CantOpenError, apsw.ReadOnlyError) as err:
        raise StoreIOError(tmp, "backup", f"{type(err).__name__}: {err}") from err
    finally:
        with FORK_GATE.section():
            dst.close()
    return pages, integrity
