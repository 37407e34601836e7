"""WAL checkpoints: the schedule under a fake clock, and the TRUNCATE that empties the WAL."""

from __future__ import annotations

import os

from _procs import start

from sessionstore import SessionStore, StoreConfig
from sessionstore._checkpoint import CheckpointSchedule


def test_schedule_is_due_at_interval() -> None:
    """Nothing is due before the interval; at the interval it is; success re-arms it."""
    sched = CheckpointSchedule(30.0, 4096, now=100.0)
    assert not sched.due(129.9)
    assert sched.seconds_until_due(120.0) == 10.0
    assert sched.due(130.0)
    sched.record(130.0, ok=True)
    assert not sched.due(159.0) and sched.due(160.0)


def test_schedule_is_due_for_size_past_the_limit() -> None:
    """A commit leaving the WAL over the limit makes a checkpoint due for size, not under it."""
    sched = CheckpointSchedule(30.0, 4096, now=0.0)
    assert not sched.due_for_size(4096, now=0.0)
    assert sched.due_for_size(4097, now=0.0)
    sched.record(0.5, ok=True)
    assert not sched.due(0.5) and sched.due(30.5)


def test_schedule_backs_off_while_busy() -> None:
    """Busy results back off 10, 20, 40 ms ... capped; size triggers wait out the backoff too."""
    sched = CheckpointSchedule(30.0, 4096, now=0.0, max_backoff_s=0.05)
    waits = []
    now = 0.0
    for _ in range(5):
        sched.record(now, ok=False)
        waits.append(round(sched.retry_at - now, 6))
        assert not sched.due_for_size(1 << 20, now)  # a pinned WAL is not retried at once
        now = sched.retry_at
        assert sched.due_for_size(1 << 20, now)
    assert waits == [0.01, 0.02, 0.04, 0.05, 0.05]
    sched.record(now, ok=True)
    assert sched.busy_streak == 0 and sched.due_for_size(1 << 20, now)


def test_interval_retry_after_busy_is_not_a_full_interval() -> None:
    """A busy interval checkpoint is retried after the backoff, not 30 s later."""
    sched = CheckpointSchedule(30.0, 4096, now=0.0)
    sched.record(30.0, ok=False)
    assert not sched.due(30.005) and sched.due(30.01)


def test_checkpoint_truncates_wal(store: SessionStore, session_id: str) -> None:
    """checkpoint() runs TRUNCATE on the writer: the WAL file goes to 0 bytes."""
    for i in range(200):
        store.log_event(session_id, f"m{i}", data={"pad": "x" * 500})
    assert os.path.getsize(store.path + "-wal") > 0
    result = store.checkpoint()
    assert result.ok and result.mode == "TRUNCATE"
    assert result.wal_bytes_before > 0 and result.wal_bytes_after == 0
    assert store.stats().last_checkpoint == result


def test_checkpoint_busy_when_reader_pins_wal(store: SessionStore, session_id: str) -> None:
    """A reader in another process pinning the WAL makes TRUNCATE report busy, not hang."""
    store.log_event(session_id, "before reader")
    reader = start("hold_read", store.path)
    try:
        store.log_event(session_id, "after reader")
        result = store.checkpoint()
        assert not result.ok and result.error and result.error.startswith("busy")
        assert result.duration_s < 2.0
    finally:
        reader.communicate("go\n", timeout=30)
    assert store.checkpoint().ok


def test_size_trigger_restarts_after_commit(db_path: str) -> None:
    """A commit that leaves the WAL past checkpoint_wal_bytes restarts it right after."""
    config = StoreConfig(checkpoint_wal_bytes=64 * 1024, checkpoint_interval_s=3600)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        peak = 0
        for i in range(300):
            store.log_event(sid, f"m{i}", data={"pad": "x" * 2000})
            peak = max(peak, os.path.getsize(db_path + "-wal"))
        stats = store.stats()
        assert stats.checkpoints >= 5
        assert stats.last_checkpoint is not None and stats.last_checkpoint.mode == "RESTART"
        assert peak < 4 * 64 * 1024  # ~1.2 MB written, the WAL never passed a few limits


def test_interval_checkpoint_runs_in_background(db_path: str) -> None:
    """With nothing being written, the timer thread still truncates the WAL each interval."""
    config = StoreConfig(checkpoint_interval_s=0.05)
    with SessionStore.open(db_path, config=config) as store:
        store.create_session("s")
        checkpointer = store._writer.checkpointer
        assert checkpointer is not None
        assert checkpointer.wait_for_runs(2, timeout=30)
        assert store.stats().last_checkpoint is not None
        assert os.path.getsize(db_path + "-wal") == 0


def test_collision_with_another_checkpointer_retries_soon() -> None:
    """Busy at once because another process checkpoints: retry in 10 ms, backoff not grown."""
    sched = CheckpointSchedule(30.0, 4096, now=0.0)
    sched.record(0.0, ok=False)
    sched.record(0.01, ok=False)  # a pinned WAL: backoff grows to 20 ms
    assert sched.busy_streak == 2
    sched.record(1.0, ok=False, collided=True)
    assert sched.busy_streak == 2 and sched.retry_at == 1.01
    assert sched.due_for_size(1 << 20, 1.01)
