"""The files of one store: the database and the side files named after it.

A store at ``path`` (resolved once at open, so every name below is made from the real path)
lives in up to five files in one directory:

- ``path``: the SQLite database;
- ``path-wal``, ``path-shm``: SQLite's write-ahead log and its shared-memory index;
- ``path-ops.jsonl``: the durable journal of ops a closed store could not apply (``_journal``);
- ``path-ops.rejected.jsonl``: journal lines the database refused, each after its reason.

This is the one place that names them and reads their sizes. Rejected: each module building
``f"{path}-wal"`` where it needed it (six places read the WAL size, each its own way).
"""

from __future__ import annotations

import os

__all__ = [
    "JOURNAL_SUFFIX",
    "REJECTED_SUFFIX",
    "SHM_SUFFIX",
    "WAL_SUFFIX",
    "file_sizes",
    "journal_path",
    "rejected_path",
    "shm_path",
    "size_or_zero",
    "wal_path",
    "wal_size",
]

WAL_SUFFIX = "-wal"
SHM_SUFFIX = "-shm"
JOURNAL_SUFFIX = "-ops.jsonl"
REJECTED_SUFFIX = "-ops.rejected.jsonl"


def wal_path(db_path: str) -> str:
    """SQLite's write-ahead log of the database at ``db_path``."""
    return db_path + WAL_SUFFIX


def shm_path(db_path: str) -> str:
    """SQLite's shared-memory WAL index of the database at ``db_path``."""
    return db_path + SHM_SUFFIX


def journal_path(db_path: str) -> str:
    """The durable op journal of the database at ``db_path``."""
    return db_path + JOURNAL_SUFFIX


def rejected_path(db_path: str) -> str:
    """The file of kept-aside journal lines of the database at ``db_path``."""
    return db_path + REJECTED_SUFFIX


def size_or_zero(path: str) -> int:
    """Bytes in ``path`` now, 0 when it does not exist (follows links, as ``os.stat``).

    Raises:
        OSError: the file exists but cannot be read (permissions on its directory).
    """
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def wal_size(db_path: str) -> int:
    """Bytes in the database's ``-wal`` now (0 when there is none).

    Raises:
        OSError: as :func:`size_or_zero`.
    """
    return size_or_zero(wal_path(db_path))


def file_sizes(db_path: str) -> dict[str, int]:
    """Sizes of the database, its WAL, the op journal and the rejected-ops file, in bytes.

    Raises:
        OSError: as :func:`size_or_zero`.
    """
    return {
        "db_bytes": size_or_zero(db_path),
        "wal_bytes": wal_size(db_path),
        "journal_bytes": size_or_zero(journal_path(db_path)),
        "rejected_bytes": size_or_zero(rejected_path(db_path)),
    }
