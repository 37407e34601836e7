"""Schema migrations: ``migrations/NNNN_name.sql`` applied in order, tracked by ``user_version``.

Several processes may open a brand-new file at the same moment. Each reads ``user_version``
inside ``BEGIN IMMEDIATE``, so exactly one applies a migration and the others, once they get
the write lock, see it done. A database from a newer sessionstore is refused untouched.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import apsw

from ._connection import RetryPolicy
from .errors import SchemaVersionError

__all__ = ["Migration", "apply_migrations", "latest_version", "load_migrations"]

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class Migration:
    """One numbered SQL script."""

    __slots__ = ("name", "sql", "version")

    def __init__(self, version: int, name: str, sql: str) -> None:
        self.version = version
        self.name = name
        self.sql = sql

    def __repr__(self) -> str:
        return f"<Migration {self.version} {self.name}>"


def _migrations_dir() -> Path:
    # Installed wheel: shipped inside the package. Checkout or editable install: the top-level
    # folder beside the package.
    packaged = resources.files("sessionstore").joinpath("migrations")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


@lru_cache(maxsize=1)
def load_migrations() -> tuple[Migration, ...]:
    """Read every migration script, in version order.

    Raises:
        RuntimeError: the folder is missing, or numbers are duplicated or have gaps.
    """
    folder = _migrations_dir()
    if not folder.is_dir():
        raise RuntimeError(f"sessionstore migrations not found at {folder}")
    found = []
    for entry in sorted(folder.iterdir()):
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations in {folder} must be numbered 1..N without gaps: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this sessionstore writes."""
    return len(load_migrations())


def _user_version(conn: apsw.Connection) -> int:
    return int(conn.pragma("user_version"))


def apply_migrations(conn: apsw.Connection, path: str, policy: RetryPolicy) -> int:
    """Bring the schema of ``conn`` up to date.

    Args:
        conn: an open connection (WAL, busy handler set).
        path: the database path, for errors.
        policy: retries BEGIN IMMEDIATE on BUSY.

    Returns:
        The number of migrations this call applied (0 when another process did, or none due).

    Raises:
        SchemaVersionError: the database is newer than this code; nothing was changed.
    """
    migrations = load_migrations()
    latest = len(migrations)
    current = _user_version(conn)
    if current == latest:
        return 0  # the common case: no write lock taken at open
    if current > latest:
        raise SchemaVersionError(path, current, latest)

    def migrate() -> int:
        conn.execute("BEGIN IMMEDIATE").fetchall()
        try:
            version = _user_version(conn)
            if version > latest:
                raise SchemaVersionError(path, version, latest)
            applied = 0
            for migration in migrations[version:]:
                for _ in conn.execute(migration.sql):
                    pass  # drain: every statement of the script must run
                conn.execute(f"PRAGMA user_version = {migration.version}").fetchall()
                applied += 1
            conn.execute("COMMIT").fetchall()
        except BaseException:
            if conn.txn_state() != apsw.mapping_txn_state["SQLITE_TXN_NONE"]:
                conn.execute("ROLLBACK").fetchall()
            raise
        return applied

    return policy.call(migrate, path=path, operation="migrate")
