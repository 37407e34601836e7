"""A read of a store's database without a store: how the ``status`` screen reads.

``status`` runs in shell hooks at exit storms, where its start-up is the whole cost, and a
read-only :class:`~sessionstore.SessionStore` imports pydantic and builds every model class
first (three quarters of the command's time, measured in ``benchmarks/README.md``). A peek
keeps the read-only store's promises with none of that:

- the same refusals before any read (``identify``, ``check_read_only_kind``, then
  ``check_read_only_version``): anything but a sessionstore database at the latest schema;
- the same connection (``open_read_only``): nothing created or changed, no ``-wal``/``-shm``
  left behind; an immutable snapshot when no process has the file open (``read_only_mode``);
- the fork gate around every statement, as around the store's reads.

All its reads run in one read transaction, so they see one state of the database, and only
the first may wait for a lock. It answers in plain rows: ``_summaries`` holds its statements.
Rejected alternative: a lighter ``SessionStore.open(read_only=True)``, whose read methods
return models by contract.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from . import _lifecycle as lifecycle
from ._connection import open_read_only, read_only_mode, translate_open_error
from ._forkgate import FORK_GATE
from ._migrate import identify
from ._opening import check_read_only_kind, check_read_only_version
from ._summaries import schema_version
from .errors import StoreBusyError

__all__ = ["Peek", "peek"]


@dataclass(frozen=True)
class _Busy:
    """The busy settings of a peek's connection (a ``_connection.BusySettings``)."""

    busy_timeout_ms: int
    busy_handler: str = "fair"  # StoreConfig's default: waiters take turns


class Peek:
    """One open read transaction on a sessionstore database (a ``_summaries.Source``)."""

    def __init__(self, path: str, conn: apsw.Connection, snapshot: str | None) -> None:
        self.path = path  # the real path that was read
        self.snapshot = snapshot  # why an immutable snapshot was read, or None: a live read
        self._conn = conn

    def execute(self, statements: str, bindings: Sequence[Any] | None = None, /) -> list[Any]:
        """Run one statement and return all its rows (the fork gate held meanwhile)."""
        with FORK_GATE.section():
            return list(self._conn.execute(statements, bindings))


@contextlib.contextmanager
def peek(path: str, timeout_s: float) -> Iterator[Peek]:
    """Read the database at ``path`` as a read-only store would, without opening one.

    Args:
        path: the database file (symlinks resolved once, as by ``SessionStore.open``).
        timeout_s: how long each wait for another process's lock may last: reading the
            file's kind, waiting for ``-shm`` while a peer opens or closes, and the first
            statement.

    Yields:
        A :class:`Peek`; every statement run through it sees the same state of the database.

    Raises:
        ForeignDatabaseError: a SQLite file of another application.
        SchemaVersionError: written by a newer sessionstore.
        StoreOpenError: no sessionstore database, an older schema (a peek migrates nothing),
            or the file cannot be opened.
        StoreCorruptError: not a SQLite database, or corrupt.
        StoreBusyError: another process held its lock past ``timeout_s``.
        StoreIOError: the disk failed while reading.

        Afterwards the connection is closed, whatever happened, and no file was created or
        modified.
    """
    real = os.path.realpath(path)
    busy_ms = int(timeout_s * 1000)
    check_read_only_kind(real, identify(real, busy_timeout_ms=busy_ms))
    snapshot = read_only_mode(real, timeout_s, probe_locks=not lifecycle.open_read_write(real))
    conn = open_read_only(real, _Busy(busy_ms), snapshot=snapshot is not None)
    try:
        view = Peek(real, conn, snapshot)
        try:
            # A deferred transaction (the connection's default ``transaction_mode``), begun
            # and ended by apsw in C, as every transaction of the package is: the first read
            # takes the state all later reads see.
            with conn:
                check_read_only_version(real, schema_version(view))
                yield view
        except apsw.BusyError as err:
            raise StoreBusyError(real, "read", timeout_s) from err
        except apsw.Error as err:
            raise translate_open_error(real, err, "read") from err
    finally:
        conn.close()
