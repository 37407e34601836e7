"""The read statements: the same answer through a connection and through a ReadLease."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import apsw
import pytest

import sessionstore
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


def test_find_checkpoints_can_set_unreadable_rows_aside(db_path: str) -> None:
    """A checkpoint row with broken JSON raises, or is left out and named when asked."""
    with SessionStore.open(db_path, config=_NO_TIMER) as store:
        sid = store.create_session("s").id
        store.put_checkpoint(sid, "c1", {"ok": 1})
        store.put_checkpoint(sid, "c2", {"ok": 2})
    conn = apsw.Connection(db_path)
    try:
        conn.execute("UPDATE checkpoints SET data = '{broken' WHERE checkpoint_id = 'c2'")
        every: dict[str, Any] = dict.fromkeys(
            ("namespace", "name", "checkpoint_id", "metadata", "run_id", "before", "limit")
        )
        with pytest.raises(ValueError, match="Expecting"):
            q.find_checkpoints(conn, session_id=sid, **every)
        corrupt: list[tuple[str, str]] = []
        found = q.find_checkpoints(conn, session_id=sid, **every, corrupt=corrupt)
    finally:
        conn.close()
    assert [c.id for c in found] == ["c1"]
    assert [cid for cid, _ in corrupt] == ["c2"]


# The tools read through the store and this module; the naive baseline is the exception by
# design: it is the raw store the harness compares sessionstore against, so it must not use it.
_TOOLS = ("cli", "stress")
_EXEMPT = {"stress/_naive.py"}
_SQL = re.compile(
    r"\bSELECT\b.*\bFROM\b|\bPRAGMA\s+\w|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|INDEX|VIEW|TRIGGER)\b"
    r"|^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|VACUUM|ATTACH)\b",
    re.DOTALL,
)
_SQL_CALLS = {"execute", "executemany", "pragma", "cursor"}


def _sql_in(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL.search(node.value):
                found.append(f"{path.name}:{node.lineno}: SQL text {node.value[:60]!r}")
        elif isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value
                for v in node.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            if _SQL.search(text):
                found.append(f"{path.name}:{node.lineno}: SQL text {text[:60]!r}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SQL_CALLS
        ):
            found.append(f"{path.name}:{node.lineno}: .{node.func.attr}() call")
    return found


def test_the_tools_issue_no_sql_of_their_own() -> None:
    """The CLI, the demo and the stress harness (but its naive baseline) hold no SQL."""
    root = Path(sessionstore.__file__).parent
    files = [
        p
        for tool in _TOOLS
        for p in sorted((root / tool).rglob("*.py"))
        if p.relative_to(root).as_posix() not in _EXEMPT
    ]
    assert len(files) > 10
    assert [hit for p in files for hit in _sql_in(p)] == []
    assert _sql_in(root / "stress" / "_naive.py")  # the check sees SQL where there is some
