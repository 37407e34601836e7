"""Migrations: numbered scripts, applied once under BEGIN IMMEDIATE; foreign files refused."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import apsw
import pytest
from _procs import finish, release, start

from sessionstore import ForeignDatabaseError, SchemaVersionError, SessionStore, StoreOpenError
from sessionstore._migrate import APPLICATION_ID, latest_version, load_migrations


def _snapshot(folder: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every file of ``folder``: content digest, mtime, owner and mode."""
    out = {}
    for entry in sorted(folder.iterdir()):
        st = entry.stat()
        digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        out[entry.name] = (digest, st.st_mtime_ns, st.st_uid, st.st_mode)
    return out


def _sqlite_file(path: Path, script: str, *, wal: bool) -> None:
    conn = apsw.Connection(str(path))
    if wal:
        conn.pragma("journal_mode", "wal")
    for _ in conn.execute(script):
        pass
    conn.close()
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed and removed it


def test_new_database_gets_latest_schema(db_path: str) -> None:
    """A new file ends at user_version == the number of migrations, with every table."""
    with SessionStore.open(db_path) as store, store.lease() as lease:
        assert lease.execute("PRAGMA user_version") == [(latest_version(),)]
        tables = {r[0] for r in lease.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"sessions", "checkpoints", "events", "child_processes"} <= tables


def test_migrations_numbered_without_gaps() -> None:
    """Scripts are found from the checkout and numbered 1..N."""
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_newer_database_refused_untouched(db_path: str) -> None:
    """A database from a newer sessionstore raises SchemaVersionError and is not modified."""
    SessionStore.open(db_path).close()
    conn = apsw.Connection(db_path)
    conn.pragma("user_version", 99)
    conn.close()
    before = hashlib.sha256(Path(db_path).read_bytes()).hexdigest()
    with pytest.raises(SchemaVersionError) as info:
        SessionStore.open(db_path)
    assert (info.value.found, info.value.supported) == (99, latest_version())
    assert hashlib.sha256(Path(db_path).read_bytes()).hexdigest() == before


@pytest.mark.slow
def test_eight_processes_open_a_new_file_at_once(db_path: str) -> None:
    """8 processes creating one new database together all succeed; the schema is made once."""
    procs = [start("open", db_path) for _ in range(8)]
    release(procs)
    versions = [finish(p).strip() for p in procs]
    assert versions == [str(latest_version())] * 8
    with SessionStore.open(db_path) as store, store.lease() as lease:
        assert lease.execute("SELECT count(*) FROM sqlite_schema WHERE name='sessions'") == [(1,)]


@pytest.mark.slow
def test_wheel_ships_migrations(tmp_path: Path) -> None:
    """The built wheel carries migrations/ inside the package, where the loader looks first."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("sessionstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sessionstore/migrations/0001_initial.sql" in names
    assert "sessionstore/py.typed" in names


FOREIGN = [
    pytest.param("PRAGMA application_id = 42; CREATE TABLE t (x);", id="other-application-id"),
    pytest.param(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, name TEXT); PRAGMA user_version = 1;",
        id="a-sessions-table-no-id",
    ),
    pytest.param("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x');", id="tables"),
]


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
@pytest.mark.parametrize("script", FOREIGN)
def test_foreign_sqlite_file_refused_byte_identical(tmp_path: Path, script: str, wal: bool) -> None:
    """Another application's SQLite file: refused; bytes, mtime and side files as before."""
    path = tmp_path / "other.db"
    _sqlite_file(path, script, wal=wal)
    before = _snapshot(tmp_path)
    for _ in range(2):  # a second try sees the same untouched file
        with pytest.raises(ForeignDatabaseError) as info:
            SessionStore.open(path)
        assert isinstance(info.value, StoreOpenError)
        assert info.value.path == str(path)
        assert _snapshot(tmp_path) == before


def test_foreign_file_with_live_wal_is_refused_untouched(tmp_path: Path) -> None:
    """A foreign WAL database in use by its owner (a -wal holding commits) is refused untouched."""
    path = tmp_path / "other.db"
    owner = apsw.Connection(str(path))
    owner.pragma("journal_mode", "wal")
    owner.execute("CREATE TABLE sessions (x); INSERT INTO sessions VALUES (1)")
    before = _snapshot(tmp_path)
    assert {"other.db-wal", "other.db-shm"} <= set(before)
    with pytest.raises(ForeignDatabaseError):
        SessionStore.open(path)
    after = _snapshot(tmp_path)
    # -shm is the owner's shared memory, where every reader of a live WAL database takes a read
    # mark; its content is not the database. The file and its WAL are byte-identical.
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != "other.db-shm"} == {
        k: v for k, v in before.items() if k != "other.db-shm"
    }
    owner.close()


def test_empty_sqlite_file_is_initialised(tmp_path: Path) -> None:
    """A SQLite file with no schema at all (or a zero-byte file) is a new store."""
    empty = tmp_path / "empty.db"
    _sqlite_file(empty, "PRAGMA user_version = 0;", wal=False)
    zero = tmp_path / "zero.db"
    zero.touch()
    for path in (empty, zero):
        with SessionStore.open(path) as store, store.lease() as lease:
            assert lease.execute("PRAGMA application_id") == [(APPLICATION_ID,)]


def test_first_release_file_is_recognised_and_stamped(tmp_path: Path) -> None:
    """A file of the first release (schema 1, no id) opens, keeps its rows and gets the id."""
    path = tmp_path / "old.db"
    conn = apsw.Connection(str(path))
    conn.pragma("journal_mode", "wal")
    for _ in conn.execute(load_migrations()[0].sql):
        pass
    conn.pragma("user_version", 1)
    conn.execute(
        "INSERT INTO sessions (id, name, status, created_at, updated_at, status_at) "
        "VALUES ('s1', 'old', 'active', 1, 1, 1)"
    )
    conn.close()
    with SessionStore.open(path) as store:
        assert store.get_session("s1").name == "old"
        with store.lease() as lease:
            assert lease.execute("PRAGMA application_id") == [(APPLICATION_ID,)]
            assert lease.execute("PRAGMA user_version") == [(latest_version(),)]


def test_newer_rollback_mode_file_refused_before_wal_switch(tmp_path: Path) -> None:
    """Ours but newer, in rollback mode: SchemaVersionError with no switch to WAL, no side file."""
    path = tmp_path / "newer.db"
    SessionStore.open(path).close()
    conn = apsw.Connection(str(path))
    conn.pragma("journal_mode", "delete")
    conn.pragma("user_version", 99)
    conn.close()
    before = _snapshot(tmp_path)
    with pytest.raises(SchemaVersionError):
        SessionStore.open(path)
    assert _snapshot(tmp_path) == before
