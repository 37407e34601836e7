"""Schema migrations: ``migrations/NNNN_name.sql`` applied in order, tracked by ``user_version``.

Several processes may open a brand-new file at the same moment. Each reads ``user_version``
inside ``BEGIN IMMEDIATE``, so exactly one applies a migration and the others, once they get
the write lock, see it done. A database from a newer sessionstore is refused untouched.

Before any of that, :func:`identify` decides whether the file is ours to touch at all: a
sessionstore file carries ``PRAGMA application_id`` (stamped by migration 2); a file of the first
release (no id yet) is recognised by its schema being exactly migration 1's; anything else is
refused, byte-identical and with no ``-wal``/``-shm`` left beside it.
"""

from __future__ import annotations

import enum
import os
import re
import urllib.parse
from functools import lru_cache
from importlib import resources
from pathlib import Path

import apsw

from ._connection import RetryPolicy, in_transaction
from ._files import wal_path
from .errors import (
    ForeignDatabaseError,
    SchemaVersionError,
    StoreBusyError,
    StoreCorruptError,
    StoreOpenError,
)

__all__ = [
    "APPLICATION_ID",
    "FileKind",
    "Migration",
    "apply_migrations",
    "file_journal_mode",
    "identify",
    "latest_version",
    "load_migrations",
]

APPLICATION_ID = 0x53534442  # "SSDB"; written by migrations/0002_application_id.sql

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100

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
        conn: an open connection (WAL, busy handler set); its ``transaction_mode`` is set
            to IMMEDIATE (what :func:`in_transaction` begins).
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
        version = _user_version(conn)
        if version > latest:
            raise SchemaVersionError(path, version, latest)
        applied = 0
        for migration in migrations[version:]:
            for _ in conn.execute(migration.sql):
                pass  # drain: every statement of the script must run
            conn.execute(f"PRAGMA user_version = {migration.version}").fetchall()
            applied += 1
        return applied

    # BEGIN IMMEDIATE, COMMIT, ROLLBACK on any exception: the writer's one wrapper, in C.
    conn.transaction_mode = "IMMEDIATE"
    return policy.call(lambda: in_transaction(conn, migrate), path=path, operation="migrate")


class FileKind(str, enum.Enum):
    """What :func:`identify` found at a path."""

    NEW = "new"  # missing, empty, or a SQLite file with no schema at all: ours to initialise
    OURS = "ours"  # carries our application_id
    FIRST_RELEASE = "first_release"  # schema 1 exactly, from before the id was stamped


@lru_cache(maxsize=1)
def _first_release_schema() -> tuple[tuple[str, str, str], ...]:
    """``sqlite_schema`` as migration 1 leaves it, to recognise files of the first release."""
    conn = apsw.Connection(":memory:")
    try:
        for _ in conn.execute(load_migrations()[0].sql):
            pass
        return _schema(conn)
    finally:
        conn.close()


def _schema(conn: apsw.Connection) -> tuple[tuple[str, str, str], ...]:
    rows = conn.execute(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name"
    ).fetchall()
    return tuple((str(t), str(n), str(q)) for t, n, q in rows)


def _read_header(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_HEADER_BYTES)
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise StoreOpenError(path, f"cannot read: {err.strerror}") from err


def file_journal_mode(path: str) -> str:
    """``"wal"`` or ``"rollback"`` as the file's header says (18th byte), read without SQLite.

    A read-only snapshot (``immutable=1``) connection always reports ``delete``, whatever the
    file's mode; the header is the truth for a file nobody has open.

    Raises:
        StoreOpenError: the file cannot be read.
    """
    head = _read_header(path)
    return "wal" if _plausible_header(head) and head[18] == 2 else "rollback"


def _plausible_header(head: bytes) -> bool:
    """The fixed fields of SQLite's file header hold (magic, page size, payload fractions)."""
    if len(head) < _HEADER_BYTES or not head.startswith(_SQLITE_MAGIC):
        return False
    page_size = int.from_bytes(head[16:18], "big")
    page_ok = page_size == 1 or (512 <= page_size <= 32768 and page_size & (page_size - 1) == 0)
    return page_ok and head[21:24] == b"\x40\x20\x20" and head[18] in (1, 2)


def _read_only(path: str, *, immutable: bool, busy_timeout_ms: int) -> apsw.Connection:
    # immutable=1: no locks and no side files. Used only when the file is in WAL mode and has no
    # -wal beside it, so all its content is in the file itself; a plain read-only connection to
    # a WAL database would create -wal and -shm and leave them behind (measured).
    query = "?mode=ro&immutable=1" if immutable else "?mode=ro"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + query
    conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    conn.set_busy_timeout(busy_timeout_ms)
    return conn


def identify(path: str, *, busy_timeout_ms: int = 5000) -> FileKind:
    """Decide whether ``path`` is a sessionstore database, before anything writes to it.

    Reads the 100-byte header directly; opens SQLite (read-only, creating no side file that was
    not already there) only when the header alone cannot tell.

    Args:
        path: the database file.
        busy_timeout_ms: how long a read may wait for another process's lock.

    Returns:
        NEW, OURS or FIRST_RELEASE. The file was not modified.

    Raises:
        ForeignDatabaseError: a SQLite file of another application (another application_id, or
            tables that are not sessionstore's); untouched.
        SchemaVersionError: ours, from a newer sessionstore; untouched.
        StoreCorruptError: not a SQLite file, or unreadable as one; untouched.
        StoreOpenError: the file cannot be read.
        StoreBusyError: another process held a lock past ``busy_timeout_ms``.
    """
    head = _read_header(path)
    if not head:
        return FileKind.NEW
    if not _plausible_header(head):
        # Not SQLite's header: let SQLite itself say so (the error chains its code), through
        # an immutable connection that creates nothing.
        head = bytes(_HEADER_BYTES)
    app_id = int.from_bytes(head[68:72], "big")
    if app_id not in (0, APPLICATION_ID):
        raise ForeignDatabaseError(path, f"it carries another application's id ({app_id:#x})")
    wal_mode = head[18] == 2
    if app_id == APPLICATION_ID and not wal_mode:
        # Rollback mode: the header is the whole truth. (In WAL mode apply_migrations reads
        # user_version through the WAL; no journal-mode switch happens there, we are WAL already.)
        found = int.from_bytes(head[60:64], "big")
        if found > latest_version():
            raise SchemaVersionError(path, found, latest_version())
    if app_id == APPLICATION_ID:
        return FileKind.OURS
    # No id in the header: an empty SQLite file, a first-release file, ours freshly migrated
    # with the id still only in the WAL, or a foreign file. Only the schema can tell.
    immutable = not any(head) or (wal_mode and not os.path.exists(wal_path(path)))
    try:
        conn = _read_only(path, immutable=immutable, busy_timeout_ms=busy_timeout_ms)
        try:
            app_id = int(conn.pragma("application_id"))
            version = int(conn.pragma("user_version"))
            schema = _schema(conn)
        finally:
            conn.close()
    except (apsw.NotADBError, apsw.CorruptError) as err:
        raise StoreCorruptError(path, f"{type(err).__name__}: {err}") from err
    except apsw.BusyError as err:
        raise StoreBusyError(path, "identify the file", busy_timeout_ms / 1000) from err
    except apsw.Error as err:
        raise StoreOpenError(path, f"cannot read its schema: {type(err).__name__}: {err}") from err
    if app_id == APPLICATION_ID:
        if version > latest_version():
            raise SchemaVersionError(path, version, latest_version())
        return FileKind.OURS
    if app_id != 0:
        raise ForeignDatabaseError(path, f"it carries another application's id ({app_id:#x})")
    if not schema and version == 0:
        return FileKind.NEW
    if version == 1 and schema == _first_release_schema():
        return FileKind.FIRST_RELEASE
    raise ForeignDatabaseError(
        path, f"it has tables but no sessionstore id (user_version {version})"
    )
