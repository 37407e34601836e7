"""The writer: BEGIN IMMEDIATE per op, batches in savepoints, and checkpoints after commits."""

from __future__ import annotations

import os

import apsw
import pytest

from sessionstore import SessionNotFoundError, SessionStore, StoreConfig
from sessionstore._ops import LogEvent


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


def test_truncate_runs_when_wal_passes_its_limit(db_path: str) -> None:
    """A commit that leaves the WAL past checkpoint_wal_bytes is followed by a TRUNCATE."""
    config = StoreConfig(checkpoint_wal_bytes=256 * 1024)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        for i in range(200):
            store.log_event(sid, f"m{i}", data={"pad": "x" * 3000})
        last = store._writer.last_checkpoint
        assert store._writer.checkpoints >= 2
        assert last is not None and last.mode == "TRUNCATE" and last.ok


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


def test_batch_lock_timeout(store: SessionStore, session_id: str) -> None:
    """apply_batch gives up with TimeoutError when the writer lock stays held."""
    with store._writer.lock, pytest.raises(TimeoutError):
        store._writer.apply_batch([LogEvent(session_id=session_id, message="x")], lock_timeout=0.05)
    assert store.events(session_id) == []
