"""Shared fixtures: a fresh database per test, and leak checks (stores, children, threads, fds)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _support import still_running, zombie_children

from sessionstore import SessionStore
from sessionstore.testing import open_stores


def _living_children() -> dict[int, psutil.Process]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
    return found


def _reap_new_zombies(before: set[int]) -> None:
    """Reap this process's zombie children that a test left (killed above, or never waited).

    Orphans a subreaper test adopted, or a failed test's wrapper, would otherwise stay zombies
    of this process and show up in the next test that counts them: one failure would cascade.
    """
    for pid in zombie_children() - before:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


# A few descriptors may outlive a test for good reasons (a logging handler, a lazily opened
# /dev/urandom); dozens mean pidfds or files nobody closes.
_FD_SLACK = 8


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


# How long the threads a test started may take to end after it (a worker finishing the job a
# close or a released callback left it): joined, so only a thread still running costs the wait.
_THREADS_END_S = 10.0


def _describe(fds: set[int]) -> list[str]:
    out = []
    for fd in sorted(fds)[:10]:
        with contextlib.suppress(OSError):
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves a store open, a child process alive or a thread running.

    Its zombie children are reaped whatever the outcome, so a failure stays its own.
    """
    threads_before = set(threading.enumerate())
    stores_before = {id(s) for s in open_stores()}
    children_before = set(_living_children())
    zombies_before = zombie_children()
    fds_before = _open_fds()
    yield
    leaked_stores = [s for s in open_stores() if id(s) not in stores_before]
    leaked_children = {
        pid: p for pid, p in _living_children().items() if pid not in children_before
    }
    for store in leaked_stores:
        store.close(timeout=0)
    for proc in leaked_children.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(leaked_children.values()), timeout=5)
    _reap_new_zombies(zombies_before)
    problems = []
    if leaked_stores:
        problems.append(f"left {len(leaked_stores)} store(s) open: {leaked_stores}")
    if leaked_children:
        described = [
            f"{p.pid} {p.info if hasattr(p, 'info') else ''}" for p in leaked_children.values()
        ]
        problems.append(f"left {len(leaked_children)} child process(es) alive: {described}")
    # Each leaked thread was one more reason for "multi-threaded fork" warnings in later tests.
    started = [t for t in threading.enumerate() if t not in threads_before]
    leaked_threads = still_running(started, _THREADS_END_S)
    if leaked_threads:
        problems.append(f"left {len(leaked_threads)} thread(s) running: {leaked_threads}")
    leaked_fds = _open_fds() - fds_before
    if len(leaked_fds) > _FD_SLACK:
        problems.append(f"left {len(leaked_fds)} file descriptors open: {_describe(leaked_fds)}")
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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can traverse and read (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="sessionstore-shared-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
