"""_peek: a read-only store's promises without a store (how ``status`` reads).

Each test compares the whole directory (bytes, mtime, owner, mode of every file) before and
after: a peek creates and changes nothing, whatever it refuses or waits for.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import apsw
import pytest
from _procs import finish, release, start
from _support import StoppedLockHolder

from sessionstore import (
    ForeignDatabaseError,
    SchemaVersionError,
    SessionStore,
    StoreBusyError,
    StoreCorruptError,
    StoreOpenError,
)
from sessionstore._migrate import latest_version
from sessionstore._peek import peek
from sessionstore._summaries import status_counts


def _snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for entry in sorted(folder.iterdir()):
        st = entry.lstat()
        digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        out[entry.name] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def _closed_store(folder: Path, sessions: int = 1) -> Path:
    path = folder / "sessions.db"
    with SessionStore.open(path) as store:
        for n in range(sessions):
            store.create_session(f"s{n}")
    return path


def test_closed_database_is_read_as_a_snapshot_and_left_as_it_was(tmp_path: Path) -> None:
    """No process has it open: an immutable snapshot (and why), no -wal/-shm made."""
    path = _closed_store(tmp_path, sessions=2)
    before = _snapshot(tmp_path)
    with peek(str(path), 1.0) as view:
        assert view.snapshot is not None and "no process has the database open" in view.snapshot
        assert view.path == str(path)
        assert status_counts(view) == {"active": 2}
    assert _snapshot(tmp_path) == before


def test_a_symlink_is_read_through_its_real_path(tmp_path: Path) -> None:
    """Resolved once, as SessionStore.open does: side files are named from the real file."""
    path = _closed_store(tmp_path)
    link = tmp_path / "link.db"
    link.symlink_to(path)
    with peek(str(link), 1.0) as view:
        assert view.path == str(path)


def test_reads_see_one_state_while_a_writer_commits(tmp_path: Path) -> None:
    """Every statement of one peek sees the state of its first read; the next peek, the new one."""
    path = _closed_store(tmp_path)
    with SessionStore.open(path) as writer:  # open read-write here: a live read, not a snapshot
        with peek(str(path), 1.0) as view:
            assert view.snapshot is None
            assert status_counts(view) == {"active": 1}
            writer.create_session("committed meanwhile")
            assert status_counts(view) == {"active": 1}
        with peek(str(path), 1.0) as view:
            assert status_counts(view) == {"active": 2}


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_no_database_is_refused_and_none_is_created(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "sessions.db"
    if kind == "empty":
        path.touch()
    before = _snapshot(tmp_path)
    with pytest.raises(StoreOpenError, match="read-only open creates"), peek(str(path), 1.0):
        pass
    assert _snapshot(tmp_path) == before


def _sqlite_file(path: Path, script: str) -> None:
    conn = apsw.Connection(str(path))
    conn.execute(script)
    conn.close()


@pytest.mark.parametrize("kind", ["foreign", "not-sqlite"])
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "other.db"
    error: type[Exception]
    if kind == "foreign":
        _sqlite_file(path, "CREATE TABLE notes (body TEXT)")
        error = ForeignDatabaseError
    else:
        path.write_bytes(b"not a database, just text " * 100)
        error = StoreCorruptError
    before = _snapshot(tmp_path)
    with pytest.raises(error), peek(str(path), 1.0):
        pass
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("offset", [1, -1], ids=["newer", "older"])
def test_another_schema_version_is_refused_untouched(tmp_path: Path, offset: int) -> None:
    """Newer: SchemaVersionError. Older: StoreOpenError (a peek migrates nothing)."""
    path = _closed_store(tmp_path)
    conn = apsw.Connection(str(path))
    conn.pragma("user_version", latest_version() + offset)
    conn.close()
    before = _snapshot(tmp_path)
    expected = SchemaVersionError if offset > 0 else StoreOpenError
    with pytest.raises(expected, match="version"), peek(str(path), 1.0):
        pass
    assert _snapshot(tmp_path) == before


def test_locks_held_with_no_shm_are_waited_for_then_busy(tmp_path: Path) -> None:
    """A peer in exclusive locking mode: reading without locks could see a half-written page.

    The peek waits its timeout, raises StoreBusyError and changes nothing.
    """
    path = _closed_store(tmp_path)
    peer = start("hold_exclusive", str(path))
    try:
        assert not os.path.exists(f"{path}-shm")
        before = _snapshot(tmp_path)
        with pytest.raises(StoreBusyError) as info, peek(str(path), 0.2):
            pass
        assert info.value.waited_s == 0.2
        assert _snapshot(tmp_path) == before
    finally:
        release([peer])
        finish(peer)


def test_a_peer_stopped_holding_the_write_lock_does_not_stop_a_peek(tmp_path: Path) -> None:
    """WAL readers never wait for the writer: a SIGSTOPped lock holder costs a peek nothing.

    The peer's open connection keeps -wal/-shm: a live read, which sees every commit before
    the peer's transaction and changes nothing.
    """
    path = _closed_store(tmp_path, sessions=2)
    with StoppedLockHolder(str(path)):
        before = _snapshot(tmp_path)
        with peek(str(path), 0.5) as view:
            assert view.snapshot is None
            assert status_counts(view) == {"active": 2}
        assert _snapshot(tmp_path) == before


def test_beside_a_writer_opening_and_closing_every_peek_reads(tmp_path: Path) -> None:
    """A peer opening and closing in a loop: every peek reads, no count lower than the last.

    For a moment at each open and close the peer holds locks with no -shm, and -wal/-shm come
    and go. At least 300 peeks, and on until the peer has committed 3 sessions meanwhile.
    """
    path = _closed_store(tmp_path)
    peer = start("open_close_until_told", str(path))
    try:
        failures: list[tuple[int, str]] = []
        n = last = 0
        while n < 300 or last < 4:
            n += 1
            try:
                with peek(str(path), 5.0) as view:
                    count = status_counts(view)["active"]
            except Exception as err:
                failures.append((n, repr(err)))
                continue
            if count < last:
                failures.append((n, f"count went back from {last} to {count}"))
            last = count
        assert not failures, failures
    finally:
        release([peer])
        finish(peer)


def test_a_held_peek_is_closed_when_its_body_raises(tmp_path: Path) -> None:
    """The connection is closed whatever the body does (the autouse fixture counts descriptors)."""
    path = _closed_store(tmp_path)

    def read_then_fail() -> None:
        with peek(str(path), 1.0) as view:
            status_counts(view)
            raise KeyError("the caller's own error")

    with pytest.raises(KeyError, match="own error"):
        read_then_fail()
    with SessionStore.open(path) as store:  # and the file is as writable as before
        store.create_session("after")


def test_peek_leaves_the_hold_open_peer_untouched(tmp_path: Path) -> None:
    """Another process holding the store open: a live read, and its files are left as they were."""
    path = _closed_store(tmp_path)
    holder = start("hold_open", str(path))
    try:
        before = _snapshot(tmp_path)
        with peek(str(path), 1.0) as view:
            assert view.snapshot is None
            assert status_counts(view) == {"active": 1}
        assert _snapshot(tmp_path) == before
    finally:
        release([holder])
        finish(holder)
