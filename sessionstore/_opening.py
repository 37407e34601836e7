"""What opening a store checks before the first write, read-write or read-only.

Read-write (``SessionStore._open``): the journal and the rejected file are checked first (a
planted link or FIFO is refused before anything is touched); then, on the writer's connection
and under its lock, :func:`prepare_schema` (the integrity probe, then the migrations); then the
checkpoint timer starts and :func:`replay_at_open` applies the journal closed stores left,
which never makes the open fail. Read-only: :func:`check_read_only_kind` and
:func:`check_read_only_version` refuse anything but a sessionstore database at the latest
schema, since a read-only open creates and migrates nothing. A failed open of either kind
leaves nothing behind (the store's ``_abort_open``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import apsw

from ._connection import RetryPolicy
from ._migrate import FileKind, apply_migrations, latest_version
from .errors import SchemaVersionError, StoreCorruptError, StoreOpenError

if TYPE_CHECKING:  # `status` runs the read-only checks below without importing pydantic
    from ._models import ReplayReport

__all__ = [
    "QUICK_CHECK_MAX_BYTES",
    "check_read_only_kind",
    "check_read_only_version",
    "prepare_schema",
    "probe_integrity",
    "replay_at_open",
]

log = logging.getLogger("sessionstore")

QUICK_CHECK_MAX_BYTES = 4 << 20  # quick_check reads every page: about 1 ms per MiB here


def probe_integrity(conn: apsw.Connection, path: str) -> str:
    """``PRAGMA quick_check`` at open, for files up to ``QUICK_CHECK_MAX_BYTES``.

    Catches the common corruptions (a torn or overwritten page, a broken index) before the
    first write lands on them. Larger files skip it (``doctor`` runs the full check).

    Returns:
        ``"ok"``, or why the check was skipped.

    Raises:
        StoreCorruptError: the check found a problem; nothing was written.
    """
    size = int(conn.pragma("page_count")) * int(conn.pragma("page_size"))
    if size > QUICK_CHECK_MAX_BYTES:
        return f"skipped: {size} bytes, over {QUICK_CHECK_MAX_BYTES}"
    found = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if found != ["ok"]:
        raise StoreCorruptError(path, "quick_check: " + "; ".join(found[:5]))
    return "ok"


def prepare_schema(conn: apsw.Connection, path: str, policy: RetryPolicy) -> str:
    """On the writer's connection (its lock held): the integrity probe, then the migrations.

    Returns:
        What the integrity probe found (see :func:`probe_integrity`).

    Raises:
        StoreCorruptError: the probe found a problem; nothing was written.
        SchemaVersionError: written by a newer sessionstore; nothing was changed.
        apsw.Error: from SQLite (the caller translates it).
    """
    probe = probe_integrity(conn, path)
    apply_migrations(conn, path, policy)
    return probe


def check_read_only_kind(path: str, kind: FileKind) -> None:
    """Refuse a read-only open of anything but a sessionstore database (before any read).

    Raises:
        StoreOpenError: no sessionstore database, or one of the first release (a read-only
            open creates and migrates nothing).
    """
    if kind is not FileKind.OURS:
        what = "no sessionstore database" if kind is FileKind.NEW else "an older schema"
        raise StoreOpenError(
            path,
            f"{what} here; a read-only open creates and migrates nothing (open it once "
            "read-write first)",
        )


def check_read_only_version(path: str, version: int) -> None:
    """Refuse a read-only open of a schema other than the latest (``PRAGMA user_version``).

    Raises:
        SchemaVersionError: written by a newer sessionstore.
        StoreOpenError: an older schema (a read-only open migrates nothing).
    """
    if version > latest_version():
        raise SchemaVersionError(path, version, latest_version())
    if version < latest_version():
        raise StoreOpenError(
            path,
            f"schema version {version} is older than {latest_version()}; a read-only "
            "open migrates nothing (open it once read-write first)",
        )


def replay_at_open(path: str, replay: Callable[[], ReplayReport]) -> ReplayReport:
    """Replay the journal; no op, and no state of the database, ever makes open fail.

    Returns:
        What the replay did, or a report whose ``deferred`` says why the journal was left
        for a later open (busy, disk, anything but an unsafe file).

    Raises:
        StoreOpenError: the journal or rejected file is not safe to touch.
    """
    try:
        return replay()
    except StoreOpenError:
        raise
    except Exception as err:  # busy, disk, anything: the journal stays for the next open
        log.warning("journal of %s not replayed at open: %s", path, err)
        from ._models import ReplayReport

        return ReplayReport(deferred=f"{type(err).__name__}: {err}")
