"""The side files of a store: one place names them and reads their sizes."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import sessionstore
from sessionstore import SessionStore
from sessionstore._files import (
    JOURNAL_SUFFIX,
    REJECTED_SUFFIX,
    SHM_SUFFIX,
    WAL_SUFFIX,
    file_sizes,
    journal_path,
    rejected_path,
    shm_path,
    size_or_zero,
    wal_path,
    wal_size,
)


def test_side_files_are_named_after_the_database() -> None:
    """Each side file is the database path plus its suffix."""
    assert wal_path("/d/s.db") == "/d/s.db-wal"
    assert shm_path("/d/s.db") == "/d/s.db-shm"
    assert journal_path("/d/s.db") == "/d/s.db-ops.jsonl"
    assert rejected_path("/d/s.db") == "/d/s.db-ops.rejected.jsonl"


def test_sizes_are_zero_for_missing_files(tmp_path: object) -> None:
    """A file that does not exist has size 0, never an error."""
    db = f"{tmp_path}/none.db"
    assert size_or_zero(db) == 0 and wal_size(db) == 0
    assert file_sizes(db) == {
        "db_bytes": 0,
        "wal_bytes": 0,
        "journal_bytes": 0,
        "rejected_bytes": 0,
    }


def test_sizes_of_an_open_store_match_the_files(db_path: str) -> None:
    """The sizes read are the files' real sizes, and the store's journal uses the same name."""
    with SessionStore.open(db_path) as store:
        store.create_session("s")
        assert store.journal_path == journal_path(store.path)
        sizes = file_sizes(store.path)
        assert sizes["db_bytes"] == os.path.getsize(store.path)
        assert sizes["wal_bytes"] == os.path.getsize(wal_path(store.path)) > 0
        assert store.stats().wal_bytes == wal_size(store.path)


def _string_constants(tree: ast.AST) -> Iterator[ast.Constant]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node


def test_no_other_module_names_a_side_file() -> None:
    """Only _files.py spells a side file's suffix; everything else asks it (one of each)."""
    package = Path(sessionstore.__file__).parent
    suffixes = (WAL_SUFFIX, SHM_SUFFIX, JOURNAL_SUFFIX, REJECTED_SUFFIX)
    found = []
    for source in sorted(package.rglob("*.py")):
        if source.name == "_files.py" and source.parent == package:
            continue
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in _string_constants(tree):
            if node.value.endswith(suffixes):
                found.append(f"{source.relative_to(package)}:{node.lineno}: {node.value!r}")
    assert found == []
