"""The writer: BEGIN IMMEDIATE per op, batches in savepoints, and checkpoints after commits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest
from _support import HeldInThread, StepClock, StoppedLockHolder, all_event_ids

from sessionstore import SessionNotFoundError, SessionStore, StoreBusyError, StoreConfig
from sessionstore._connection import RetryPolicy
from sessionstore._ops import LogEvent
from sessionstore._writer import BATCH, FIRST_TIMED_BATCH, BatchDeadlineError, Writer, _timed_size


def test_passive_checkpoint_once_per_thousand_pages(db_path: str) -> None:
    """While a reader pins the WAL it keeps growing; PASSIVE runs once per 1000 pages of it."""
    config = StoreConfig(checkpoint_wal_bytes=1 << 30, checkpointing=False)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        reader = apsw.Connection(db_path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchall()  # pins the WAL: no restart
        try:
            for i in range(1500):
                store.log_event(sid, f"m{i}", data={"pad": "x" * 3000})
        finally:
            reader.execute("COMMIT")
            reader.close()
        pages = os.path.getsize(db_path + "-wal") // 4096
        passive = store._writer.passive_checkpoints
    # SQLite's own auto-checkpoint would have run on each of the ~1000+ commits past the first
    # 1000 pages, holding the checkpoint lock that other processes' TRUNCATE needs.
    assert pages > 3000
    assert 1 <= passive <= pages // 1000 + 1, (passive, pages)


def test_restart_runs_when_wal_passes_its_limit(db_path: str) -> None:
    """A commit that leaves the WAL past checkpoint_wal_bytes is followed by a RESTART."""
    config = StoreConfig(checkpoint_wal_bytes=256 * 1024)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        for i in range(200):
            store.log_event(sid, f"m{i}", data={"pad": "x" * 3000})
        last = store._writer.last_checkpoint
        assert store._writer.checkpoints >= 2
        assert last is not None and last.mode == "RESTART" and last.ok


def test_heartbeats_alone_keep_the_wal_bound(db_path: str) -> None:
    """An orchestrator that only sends heartbeats keeps its WAL bounded too.

    Heartbeats only (a page of WAL each), a 32 KiB bound: RESTARTs keep coming, and the WAL
    never grows past the bound by more than a few heartbeats' pages.
    """
    config = StoreConfig(checkpoint_wal_bytes=32 * 1024, checkpoint_interval_s=3600)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        store.checkpoint()  # an empty WAL to start from
        wal = db_path + "-wal"
        store.heartbeat(sid)
        per_heartbeat = os.path.getsize(wal)  # the frames one heartbeat's commit appends
        peak = 0
        for _ in range(400):
            store.heartbeat(sid)
            peak = max(peak, os.path.getsize(wal))
        checkpoints = store.stats().checkpoints
    assert checkpoints >= 10, checkpoints  # about 400 heartbeats' frames, a restart per 32 KiB
    assert peak <= 32 * 1024 + 8 * per_heartbeat + 4096, (peak, per_heartbeat)


def test_batch_rejects_one_op_and_keeps_the_rest(store: SessionStore, session_id: str) -> None:
    """In a batch, an op for a missing session is rolled back alone; the others commit."""
    ops = [
        LogEvent(session_id=session_id, message="a"),
        LogEvent(session_id="missing", message="b"),
        LogEvent(session_id=session_id, message="c"),
    ]
    errors = store._writer.apply_batch(ops)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], SessionNotFoundError)
    assert [e.message for e in store.events(session_id)] == ["a", "c"]


def test_timed_batch_stops_between_transactions_at_its_deadline(db_path: str) -> None:
    """Under a deadline a batch starts small, commits whole transactions, says how far it got."""
    clock = StepClock()
    store = SessionStore.open(db_path, config=StoreConfig(checkpointing=False), clock=clock)
    sid = store.create_session("s").id
    ops = [LogEvent(session_id=sid, message=str(i)) for i in range(3 * BATCH)]
    with pytest.raises(BatchDeadlineError) as stopped:
        store._writer.apply_batch(ops, deadline=clock() + 0.006)
    done = len(stopped.value.results)
    assert FIRST_TIMED_BATCH <= done < len(ops)
    assert stopped.value.results == [None] * done
    assert f"after {done} of {len(ops)} ops" in str(stopped.value)
    # What it says committed did, in order; nothing after it was tried.
    assert [e.message for e in store.events(sid, limit=len(ops))] == [str(i) for i in range(done)]
    store.close()


def test_timed_batch_size_fits_half_the_time_left() -> None:
    """The next transaction's size: half the time left at the last one's pace, 1 to BATCH."""
    assert _timed_size(64, 0.001, 0.1) == 50
    assert _timed_size(64, 1.0, 0.1) == 1
    assert _timed_size(64, 1e-7, 10.0) == BATCH
    assert _timed_size(64, 0.0, 0.1) == 128  # a clock that stood still: grow, never divide
    assert _timed_size(BATCH, 0.0, 0.1) == BATCH


def test_batch_lock_timeout(store: SessionStore, session_id: str) -> None:
    """apply_batch gives up with TimeoutError when the writer lock stays held."""
    with store._writer._lock, pytest.raises(TimeoutError):
        store._writer.apply_batch([LogEvent(session_id=session_id, message="x")], lock_timeout=0.05)
    assert store.events(session_id) == []


_PESTER = str(Path(__file__).with_name("_pester.py"))


@pytest.mark.slow
def test_signal_raised_exceptions_never_leak_the_transaction(tmp_path: Path) -> None:
    """3 rounds of 2 s: a handler raising every ~0.2 ms mid-write never leaves the lock held.

    Heartbeats and events in turns, RESTART checkpoints interrupted too (a 64 KiB WAL bound);
    after the storm the bound still acts (RESTARTs while 200 KB are written).
    """
    for round_no in range(3):
        db = str(tmp_path / f"pester{round_no}.db")
        with SessionStore.open(db) as store:
            sid = store.create_session("pestered").id
        result_path = tmp_path / f"pester{round_no}.json"
        child = subprocess.Popen(
            [sys.executable, _PESTER, db, sid, "2", str(result_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "done"
            result = json.loads(result_path.read_text())
            # The child is alive with its store open: another process writes at once.
            other = apsw.Connection(db)
            other.set_busy_timeout(1000)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
            except apsw.BusyError:
                pytest.fail(f"round {round_no}: the pestered process kept the write lock")
            finally:
                other.close()
        finally:
            child.communicate("go\n", timeout=60)
        assert child.returncode == 0
        assert result["n_errors"] == 0, result["errors"]
        assert result["interrupted"] > 100, result["interrupted"]  # the storm really hit writes
        assert result["bound_checkpoints"] >= 2, result["bound_checkpoints"]
        with SessionStore.open(db) as store:
            present = set(all_event_ids(store, sid))
        missing = set(result["acked"]) - present
        assert not missing, f"round {round_no}: {len(missing)} acknowledged writes missing"


def test_write_deadline_bounds_the_whole_call_against_a_stopped_peer(db_path: str) -> None:
    """A peer stopped holding the lock: the write is journaled at its deadline, not busy_timeout."""
    config = StoreConfig(write_deadline_s=0.5, busy_timeout_ms=4000)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        with StoppedLockHolder(db_path):
            started = time.monotonic()
            event = store.log_event(sid, "blocked")
            elapsed = time.monotonic() - started
        assert event.id is None and store.stats().journaled == 1
    # Before: the first attempt alone waited the whole busy_timeout (4 s) outside the deadline.
    assert elapsed < 0.5 + 1.0, elapsed


def test_explicit_deadline_cuts_apply_and_apply_batch(store: SessionStore, session_id: str) -> None:
    """apply/apply_batch(deadline=...) return by that deadline though write_deadline_s is 10 s."""
    writer = store._writer
    with StoppedLockHolder(store.path):
        started = time.monotonic()
        with pytest.raises(StoreBusyError):
            writer.apply(LogEvent(session_id=session_id, message="a"), deadline=started + 0.3)
        with pytest.raises(StoreBusyError):
            writer.apply_batch(
                [LogEvent(session_id=session_id, message="b")], deadline=time.monotonic() + 0.3
            )
        elapsed = time.monotonic() - started
    assert elapsed < 0.6 + 1.0, elapsed
    assert store.events(session_id) == []


def test_no_passive_checkpoint_just_below_the_truncate_limit(db_path: str) -> None:
    """Default limits: no PASSIVE at 1000 pages; it held the lock the TRUNCATE at 1024 needs."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("s").id
        for i in range(600):
            store.log_event(sid, f"m{i}", data={"pad": "x" * 3000})
        writer = store._writer
        assert writer.passive_checkpoints == 0
        assert writer.checkpoints >= 1 and writer.last_checkpoint is not None


def _writer(db_path: str, **config: object) -> tuple[Writer, StoreConfig]:
    settings = StoreConfig(checkpointing=False, **config)  # type: ignore[arg-type]
    policy = RetryPolicy(settings.write_deadline_s, clock=time.monotonic)
    return Writer(db_path, settings, policy, time.monotonic), settings


def test_with_connection_runs_under_the_writers_lock(db_path: str) -> None:
    """with_connection hands fn the open connection while the writer's lock is held."""
    writer, _ = _writer(db_path)
    try:
        held = writer.with_connection(
            lambda conn: (writer._lock.locked(), conn.execute("SELECT 1"))
        )
        assert held[0] is True and writer.is_open
        assert not writer._lock.locked()
    finally:
        writer.close()


def test_abandon_waits_cuts_a_write_waiting_on_a_stopped_lock_holder(
    store: SessionStore, session_id: str
) -> None:
    """A write waiting on another process's lock gives up at abandon_waits, not at its deadline."""
    writer = store._writer
    errors: list[BaseException] = []
    op = LogEvent(session_id=session_id, message="w")
    with StoppedLockHolder(store.path):

        def write() -> None:
            try:
                writer.apply(op, deadline=time.monotonic() + 60)
            except BaseException as err:  # the failure the test looks for
                errors.append(err)

        thread = threading.Thread(target=write)
        thread.start()
        while not writer._lock.locked():  # the write holds the lock while it waits
            pass
        started = time.monotonic()
        writer.abandon_waits()
        thread.join(30)
        elapsed = time.monotonic() - started
        assert writer.resume_waits(timeout=5.0) is True
    assert [type(e) for e in errors] == [StoreBusyError]
    assert elapsed < 5.0, elapsed
    writer.apply(op)  # waits are back on: a free database takes the write
    assert [e.message for e in store.events(session_id)] == ["w"]


def test_resume_waits_only_once_the_lock_is_free(db_path: str) -> None:
    """resume_waits reports False (waits stay abandoned) while another thread holds the lock."""
    writer, _ = _writer(db_path)
    writer.abandon_waits()
    with HeldInThread(lambda: writer._lock):
        assert writer.resume_waits(timeout=0.05) is False
        assert writer._aborted()
    assert writer.resume_waits(timeout=5.0) is True and not writer._aborted()
