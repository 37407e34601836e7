"""Opening connections: corrupt files untouched, pragmas set, and the BUSY retry policy."""

from __future__ import annotations

import ast
import hashlib
import os
import re
from pathlib import Path

import apsw
import pytest
from _procs import finish, release, start
from _support import all_event_ids

import sessionstore
from sessionstore import SessionStore, StoreBusyError, StoreCorruptError, StoreOpenError
from sessionstore._connection import RetryPolicy, in_transaction, is_transient_busy
from sessionstore.testing import FakeClock


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a database\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
)
def test_non_database_is_corrupt_error_and_untouched(tmp_path: Path, content: bytes) -> None:
    """Opening a file that is not SQLite raises StoreCorruptError and leaves it byte-identical."""
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    before = _digest(path)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(StoreCorruptError) as info:
        SessionStore.open(path)
    assert info.value.path == str(path)
    assert isinstance(info.value.__cause__, apsw.Error)
    assert _digest(path) == before and path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == ["notes.db"]  # no -wal, -shm or journal created


def test_directory_and_missing_parent_are_open_errors(tmp_path: Path) -> None:
    """A directory, or a path whose directory does not exist, is a StoreOpenError."""
    with pytest.raises(StoreOpenError):
        SessionStore.open(tmp_path)
    with pytest.raises(StoreOpenError):
        SessionStore.open(tmp_path / "missing" / "x.db")
    with pytest.raises(ValueError):
        SessionStore.open(":memory:")


def test_every_connection_has_the_pragmas(store: SessionStore) -> None:
    """Readers get WAL, synchronous=NORMAL, foreign keys and the journal size limit too."""
    with store.lease() as lease:
        assert lease.execute("PRAGMA journal_mode") == [("wal",)]
        assert lease.execute("PRAGMA synchronous") == [(1,)]
        assert lease.execute("PRAGMA foreign_keys") == [(1,)]
        assert lease.execute("PRAGMA journal_size_limit") == [(4 * 1024 * 1024,)]


def _busy(code: int = apsw.SQLITE_BUSY) -> apsw.BusyError:
    err = apsw.exception_for(code)
    assert isinstance(err, apsw.BusyError)
    return err


def test_retry_policy_retries_busy_until_deadline() -> None:
    """BUSY (any extended code) is retried with jittered waits until the deadline, then raised."""
    clock = FakeClock()
    policy = RetryPolicy(2.0, clock=clock, sleep=clock.sleep)
    calls = 0

    def always_busy() -> None:
        nonlocal calls
        calls += 1
        raise _busy(517)  # SQLITE_BUSY_SNAPSHOT

    with pytest.raises(StoreBusyError) as info:
        policy.call(always_busy, path="p.db", operation="write")
    assert info.value.waited_s >= 2.0
    assert isinstance(info.value.__cause__, apsw.BusyError)
    assert calls > 5
    assert all(0 <= s <= 0.05 for s in clock.sleeps)
    assert len(set(clock.sleeps)) > 1  # jittered, not a fixed sleep


def test_retry_policy_succeeds_after_transient_busy() -> None:
    """A write that is BUSY twice then succeeds returns its value; no error escapes."""
    clock = FakeClock()
    policy = RetryPolicy(5.0, clock=clock, sleep=clock.sleep)
    outcomes = [_busy(), _busy(261), "done"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert policy.call(flaky, path="p", operation="w") == "done"
    assert len(clock.sleeps) == 1  # first retry is outside tenacity's wait; then one wait


def test_retry_policy_does_not_retry_other_errors() -> None:
    """Non-BUSY errors (constraint, corrupt, locked-in-connection) pass through at once."""
    policy = RetryPolicy(5.0)
    for err in (apsw.ConstraintError(), apsw.CorruptError(), apsw.LockedError(), ValueError()):
        calls = 0

        def fail(err: Exception = err) -> None:
            nonlocal calls
            calls += 1
            raise err

        with pytest.raises(type(err)):
            policy.call(fail, path="p", operation="w")
        assert calls == 1
        assert not is_transient_busy(err)


def test_deferred_read_then_write_fails_where_store_does_not(store: SessionStore) -> None:
    """The mechanism, deterministically: a deferred read-then-write gets BUSY_SNAPSHOT at once."""
    sid = store.create_session("s").id
    other = apsw.Connection(store.path)
    other.set_busy_timeout(5000)
    try:
        other.execute("BEGIN")
        other.execute("SELECT count(*) FROM events").fetchall()  # read snapshot taken
        store.log_event(sid, "committed meanwhile")  # the store's write lands regardless
        with pytest.raises(apsw.BusyError) as info:
            other.execute(
                "INSERT INTO events (op_id, session_id, level, message, created_at) "
                "VALUES ('x', ?, 'info', 'm', 0)",
                (sid,),
            )
        assert info.value.extendedresult == 517  # SQLITE_BUSY_SNAPSHOT: waiting cannot help
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert [e.message for e in store.events(sid)] == ["committed meanwhile"]


@pytest.mark.slow
def test_raw_deferred_writers_fail_under_contention_store_writers_do_not(db_path: str) -> None:
    """8 processes: raw deferred read-then-write loses writes; the store's writers lose none."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("contention").id
        with store.lease():
            pass
    conn = apsw.Connection(db_path)
    conn.execute("CREATE TABLE counter (n INTEGER)")
    conn.execute("INSERT INTO counter VALUES (0)")
    conn.close()

    raw = [start("raw_rmw", db_path, "300") for _ in range(8)]
    release(raw)
    raw_failed = sum(int(finish(p)) for p in raw)

    ours = [start("store_rmw", db_path, sid, "300") for _ in range(8)]
    release(ours)
    store_failed = sum(int(finish(p)) for p in ours)

    with SessionStore.open(db_path) as store:
        events = len(all_event_ids(store, sid))
        with store.lease() as lease:
            counted = lease.execute("SELECT n FROM counter")[0][0]
    assert raw_failed > 0, "raw deferred transactions should hit BUSY under contention"
    assert counted == 8 * 300 - raw_failed
    assert store_failed == 0
    assert events == 8 * 300


def test_retry_policy_stops_at_once_when_aborted() -> None:
    """An abort (a close that gave up waiting) ends the retries long before the deadline."""
    clock = FakeClock()
    policy = RetryPolicy(60.0, clock=clock, sleep=clock.sleep)
    calls = 0

    def busy() -> None:
        nonlocal calls
        calls += 1
        raise _busy()

    with pytest.raises(StoreBusyError):
        policy.call(busy, path="p", operation="w", abort=lambda: calls >= 3)
    assert calls == 3
    assert clock.now < 1.0


def test_only_in_transaction_begins_and_commits() -> None:
    """No module runs BEGIN/COMMIT by hand: every transaction goes through in_transaction."""
    package = Path(sessionstore.__file__).parent
    found = []
    for source in sorted(package.rglob("*.py")):
        if source.relative_to(package).as_posix() == "stress/_naive.py":
            continue  # the deliberately naive baseline the stress harness compares against
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.match(r"\s*(BEGIN|COMMIT)\b", node.value)
            ):
                found.append(f"{source.relative_to(package)}:{node.lineno}")
    assert found == []


def test_in_transaction_commits_or_rolls_back_everything(db_path: str) -> None:
    """The body's writes commit together, or none of them does when the body raises."""
    conn = apsw.Connection(db_path)
    conn.transaction_mode = "IMMEDIATE"
    try:
        conn.execute("CREATE TABLE t (x)")
        in_transaction(conn, lambda: conn.execute("INSERT INTO t VALUES (1), (2)"))

        def fails() -> None:
            conn.execute("INSERT INTO t VALUES (3)")
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            in_transaction(conn, fails)
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        assert not conn.txn_state()
    finally:
        conn.close()
