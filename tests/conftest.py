"""Shared fixtures: a fresh database path per test, and leak checks that fail the test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sessionstore import SessionStore
from sessionstore._store import live_stores


def _living_children() -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
    return found


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves a store open or a child process alive (and clean up after it)."""
    stores_before = {id(s) for s in live_stores()}
    children_before = set(_living_children())
    yield
    leaked_stores = [s for s in live_stores() if id(s) not in stores_before]
    leaked_children = {
        pid: p for pid, p in _living_children().items() if pid not in children_before
    }
    for store in leaked_stores:
        store.close(timeout=0)
    for proc in leaked_children.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(leaked_children.values()), timeout=5)
    problems = []
    if leaked_stores:
        problems.append(f"left {len(leaked_stores)} store(s) open: {leaked_stores}")
    if leaked_children:
        described = [
            f"{p.pid} {p.info if hasattr(p, 'info') else ''}" for p in leaked_children.values()
        ]
        problems.append(f"left {len(leaked_children)} child process(es) alive: {described}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A path for a new database in this test's own directory."""
    return str(tmp_path / "sessions.db")


@pytest.fixture
def store(db_path: str) -> Iterator[SessionStore]:
    """An open store on a new database, closed after the test."""
    s = SessionStore.open(db_path)
    yield s
    s.close()


@pytest.fixture
def session_id(store: SessionStore) -> str:
    """The id of a new session in ``store``."""
    return store.create_session("test").id


def pid_alive(pid: int) -> bool:
    """True when ``pid`` names a running, non-zombie process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
