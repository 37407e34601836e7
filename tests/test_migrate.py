"""Migrations: numbered scripts, applied once under BEGIN IMMEDIATE, newer databases refused."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import apsw
import pytest
from _procs import finish, release, start

from sessionstore import SchemaVersionError, SessionStore
from sessionstore._migrate import latest_version, load_migrations


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
