"""Where a write goes: applied now, queued while closing, journaled, kept aside, or unrecorded."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from _procs import start
from _support import ClosingInBackground

from sessionstore import SessionStore, StoreConfig
from sessionstore._ops import LogEvent
from sessionstore.errors import SessionNotFoundError


def test_write_after_close_is_journaled_and_replayed(db_path: str) -> None:
    """A write after close lands in the journal; the next open applies it and empties it."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    store.save_checkpoint(sid, "late", {"n": 1})
    store.remove_child(sid, 4242, exit_code=0)
    assert store.stats().journaled == 2 and os.path.getsize(store.journal_path) > 0
    with SessionStore.open(db_path) as reopened:
        assert reopened.open_replay.applied == 2
        checkpoint = reopened.latest_checkpoint(sid)
        assert checkpoint is not None and checkpoint.data == {"n": 1}
        assert not os.path.exists(reopened.journal_path)  # consumed: removed


def test_busy_past_deadline_goes_to_journal(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    """A write locked out past the deadline is journaled, logged and counted, never lost."""
    config = StoreConfig(busy_timeout_ms=50, write_deadline_s=0.3)
    store = SessionStore.open(db_path, config=config)
    sid = store.create_session("s").id
    holder = start("hold_write", db_path)
    try:
        with caplog.at_level(logging.WARNING, logger="sessionstore"):
            event = store.log_event(sid, "locked out")
        assert event.id is None
        stats = store.stats()
        assert stats.journaled == 1 and stats.failures[0].disposition == "journaled"
        assert "locked" in stats.failures[0].reason
        assert "journaled" in caplog.text
    finally:
        holder.communicate("go\n", timeout=30)
    report = store.close()
    assert report.journaled == 1 and report.replayed == 1  # close replays once it can
    with SessionStore.open(db_path) as reopened:
        assert [e.message for e in reopened.events(sid)] == ["locked out"]


def test_pending_overflow_goes_to_journal(db_path: str) -> None:
    """Past max_pending_ops a write made while closing is journaled, not dropped."""
    store = SessionStore.open(db_path, config=StoreConfig(max_pending_ops=1))
    sid = store.create_session("s").id
    with ClosingInBackground(store):
        store.log_event(sid, "queued")
        store.log_event(sid, "overflowed")
        assert store.stats().pending == 1 and store.stats().journaled == 1
    with SessionStore.open(db_path) as reopened:
        assert sorted(e.message for e in reopened.events(sid)) == ["overflowed", "queued"]


def test_journal_pending_moves_queue_to_disk(db_path: str) -> None:
    """journal_pending() (the hard-exit path) writes every queued op to the journal at once."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    with ClosingInBackground(store):
        for i in range(3):
            store.log_event(sid, f"q{i}")
        assert store.journal_pending() == 3
        assert store.stats().pending == 0
    with SessionStore.open(db_path) as reopened:
        assert [e.message for e in reopened.events(sid)] == ["q0", "q1", "q2"]


def test_queued_op_the_database_refuses_is_kept_aside_with_its_reason(db_path: str) -> None:
    """A queued op for an unknown session is kept aside at close, listed as rejected, not lost."""
    store = SessionStore.open(db_path)
    with ClosingInBackground(store) as closing:
        store.log_event("no-such-session", "orphan")
        report = closing.finish()
    assert report.rejected == 1 and report.applied_from_queue == 0
    [failure] = store.stats().failures
    assert failure.disposition == "rejected" and "SessionNotFoundError" in failure.reason
    reason, kept = Path(f"{store.path}-ops.rejected.jsonl").read_bytes().splitlines()
    assert b"rejected at close" in reason and json.loads(kept)["message"] == "orphan"


def test_failure_ring_keeps_the_most_recent_hundred(db_path: str) -> None:
    """stats().failures is bounded: the last 100 failures, oldest first; counters count them all."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    events = [store.log_event(sid, f"late {i}") for i in range(130)]
    stats = store.stats()
    assert stats.journaled == 130
    assert [f.op_id for f in stats.failures] == [e.op_id for e in events[-100:]]
    assert {f.disposition for f in stats.failures} == {"journaled"}


def test_failure_ring_from_one_large_journaling_keeps_its_newest(db_path: str) -> None:
    """Ops journaled together (a close's queue): the ring keeps the last 100, all counted."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    ops = [LogEvent.make(sid, f"queued {i}", "info", None) for i in range(250)]
    assert store._router.secure(ops, "at the drain deadline") is None
    stats = store.stats()
    assert stats.journaled == 250
    assert [f.op_id for f in stats.failures] == [op.op_id for op in ops[-100:]]
    store.close()
    with SessionStore.open(db_path) as reopened:
        assert len(reopened.events(sid, limit=1000)) == 250


# A heartbeat is applied without an op while the store is open (WriteRouter.write_call); these
# hold it to the op's promises wherever the write goes instead, with the call's own time.


def _heartbeat_at(db_path: str, sid: str) -> float | None:
    with SessionStore.open(db_path) as store:
        return store.get_session(sid).heartbeat_at


def test_heartbeat_while_closing_is_queued_with_the_time_of_the_call(db_path: str) -> None:
    """Made while closing, a heartbeat waits in the queue and lands with its call's time."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    with ClosingInBackground(store) as closing:
        before = time.time()
        store.heartbeat(sid)
        after = time.time()
        assert store.stats().pending == 1
        report = closing.finish()
    assert report.applied_from_queue == 1 and report.journaled == 0
    at = _heartbeat_at(db_path, sid)
    assert at is not None and before <= at <= after


def test_heartbeat_after_close_is_journaled_with_the_time_of_the_call(db_path: str) -> None:
    """After close a heartbeat is journaled; the replay writes the call's time, not its own."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    before = time.time()
    store.heartbeat(sid)
    after = time.time()
    assert store.stats().journaled == 1
    [failure] = store.stats().failures
    assert failure.kind == "heartbeat" and failure.disposition == "journaled"
    at = _heartbeat_at(db_path, sid)  # this open replays the journal
    assert at is not None and before <= at <= after


def test_heartbeat_locked_out_returns_by_its_deadline_and_is_journaled(db_path: str) -> None:
    """A heartbeat that cannot get the write lock returns by its deadline; its op is kept."""
    config = StoreConfig(busy_timeout_ms=50, write_deadline_s=0.3)
    store = SessionStore.open(db_path, config=config)
    sid = store.create_session("s").id
    holder = start("hold_write", db_path)
    try:
        before = time.time()
        started = time.monotonic()
        store.heartbeat(sid)
        took = time.monotonic() - started
        after = time.time()
        stats = store.stats()
        assert stats.journaled == 1 and "locked" in stats.failures[0].reason
        assert took < config.write_deadline_s + 0.25  # the deadline, and one busy wait at most
    finally:
        holder.communicate("go\n", timeout=30)
    assert store.close().replayed == 1
    at = _heartbeat_at(db_path, sid)
    # The time of the call, not of giving up on the lock a deadline later.
    assert at is not None and before <= at < before + config.write_deadline_s and at <= after


@pytest.mark.parametrize("bad", ["", "x" * 65, 42, None])
def test_heartbeat_refuses_a_bad_session_id_alike_in_every_state(db_path: str, bad: object) -> None:
    """A bad id gets the op's own validation error, open or closed, and nothing is kept."""
    store = SessionStore.open(db_path)
    errors = []
    for _ in ("open", "closed"):
        with pytest.raises(ValueError) as raised:
            store.heartbeat(bad)  # type: ignore[arg-type]
        errors.append(str(raised.value))
        store.close()
    assert errors[0] == errors[1]
    assert store.stats().journaled == 0 and not os.path.exists(store.journal_path)


class _Id(str):
    """A str subclass: a valid id that the heartbeat's plain path does not take."""


@pytest.mark.parametrize("missing", ["no-such-session", "nö-such-session", _Id("no-such")])
def test_heartbeat_for_an_unknown_session_raises_and_keeps_nothing(
    db_path: str, missing: str
) -> None:
    """An open store refuses a heartbeat for no session at once; nothing journaled or counted.

    Alike whether the id takes the plain path (an ASCII str) or the op's (any other valid id).
    """
    with SessionStore.open(db_path) as store:
        applied = store.stats().applied
        with pytest.raises(SessionNotFoundError):
            store.heartbeat(missing)
        stats = store.stats()
        assert stats.applied == applied and stats.journaled == 0 and stats.failures == []
