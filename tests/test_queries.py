"""The read statements: the same answer through a connection and through a ReadLease."""

from __future__ import annotations

from typing import Any

import apsw

from sessionstore import SessionStatus, SessionStore, StoreConfig
from sessionstore import _queries as q
from sessionstore._migrate import latest_version

_NO_TIMER = StoreConfig(checkpointing=False)


def _filled(db_path: str) -> tuple[SessionStore, str, str]:
    store = SessionStore.open(db_path, config=_NO_TIMER)
    a = store.create_session("a")
    b = store.create_session("b")
    store.pause_session(b.id)
    for i in range(5):
        store.log_event(a.id, f"e{i}")
    store.save_checkpoint(a.id, "one", {"n": 1})
    store.save_checkpoint(a.id, "two", {"n": 2})
    return store, a.id, b.id


def test_every_query_answers_alike_through_a_connection_and_a_lease(db_path: str) -> None:
    """A query function gives the same result on a raw connection and on a store's ReadLease."""
    store, a, _ = _filled(db_path)
    calls: list[Any] = [
        lambda s: q.get_session(s, a),
        lambda s: q.list_sessions(s, None),
        lambda s: q.list_sessions(s, SessionStatus.PAUSED),
        lambda s: q.status_counts(s),
        lambda s: q.stale_sessions(s, 1e12),
        lambda s: q.list_checkpoints(s, a, name=None, limit=None, newest_first=True),
        lambda s: q.newest_checkpoint(s),
        lambda s: q.checkpoint_ids(s, a),
        lambda s: q.events(s, a, None, 3),
        lambda s: q.first_of_last_events(s, a, 2),
        lambda s: q.count_events(s, a),
        lambda s: q.event_op_ids(s, a),
        lambda s: q.children(s, a, include_exited=True),
        lambda s: q.all_children(s, include_exited=True),
        lambda s: q.child_states(s, a),
        lambda s: q.integrity_check(s),
        lambda s: q.foreign_key_violations(s),
        lambda s: q.schema_version(s),
    ]
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        with store.lease("test") as lease:
            for call in calls:
                assert call(conn) == call(lease)
    finally:
        conn.close()
        store.close()


def test_maintenance_queries_report_the_store_as_it_is(db_path: str) -> None:
    """Counts, the newest checkpoint, the last events and the checks match what was written."""
    store, a, b = _filled(db_path)
    try:
        with store.lease("test") as lease:
            assert q.status_counts(lease) == {"active": 1, "paused": 1}
            assert [r[0] for r in q.stale_sessions(lease, 1e12)] == [a]  # paused is not stale
            assert q.stale_sessions(lease, 0) == []
            newest = q.newest_checkpoint(lease)
            assert newest is not None and newest["name"] == "two"
            assert q.checkpoint_ids(lease, a) == {c.id for c in store.list_checkpoints(a)}
            events = store.events(a)
            assert q.first_of_last_events(lease, a, 2) == events[-2].id
            assert q.first_of_last_events(lease, b, 2) is None
            assert q.count_events(lease, a) == 5
            assert q.event_op_ids(lease, a) == {e.op_id for e in events}
            assert q.integrity_check(lease) == ["ok"]
            assert q.foreign_key_violations(lease) == 0
            found = q.pragmas(lease)
            assert found["journal_mode"] == "wal" and found["user_version"] == latest_version()
    finally:
        store.close()
