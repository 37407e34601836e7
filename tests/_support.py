"""Helpers shared by the store tests: reading every event, and holding a store in CLOSING."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType

import psutil
from _procs import start

from sessionstore import CloseReport, SessionStore, StoreState


def zombie_children() -> set[int]:
    """The pids of this process's children that have exited and wait to be reaped."""
    found = set()
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.add(proc.pid)
    return found


def still_running(threads: list[threading.Thread], within_s: float) -> list[str]:
    """The names of ``threads`` still running after ``within_s`` seconds in all (joined)."""
    deadline = time.monotonic() + within_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def wait_forked_child(pid: int, timeout_ms: int = 30_000) -> int | None:
    """A forked child's exit code, or None when it has not exited in time (it is then killed)."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout_ms):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class StepClock:
    """A fake clock that moves 1 ms at every reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def all_event_ids(store: SessionStore, session_id: str) -> list[str]:
    """Every event op id of the session, oldest first, read page by page."""
    out: list[str] = []
    after = None
    while page := store.events(session_id, after_id=after, limit=1000):
        out.extend(e.op_id for e in page)
        after = page[-1].id
    return out


class ClosingInBackground:
    """Keep ``store.close()`` in its drain (a lease is held) so writes meanwhile are queued.

    ``with ClosingInBackground(store) as closing:`` returns once the store is CLOSING;
    ``closing.finish()`` lets the lease go and returns close()'s report.
    """

    def __init__(self, store: SessionStore, *, timeout: float = 30) -> None:
        self._store = store
        self._timeout = timeout
        self._release = threading.Event()
        self._holding = threading.Event()
        self._reports: list[CloseReport] = []
        self._holder = threading.Thread(target=self._hold)
        self._closer = threading.Thread(
            target=lambda: self._reports.append(store.close(timeout=self._timeout))
        )

    def _hold(self) -> None:
        with self._store.lease("test holder"):
            self._holding.set()
            self._release.wait(60)

    def __enter__(self) -> ClosingInBackground:
        self._holder.start()
        assert self._holding.wait(30)
        self._closer.start()
        # close() flips the state first thing; spin on the state itself (no sleep), the flip is
        # immediate and pytest-timeout bounds a bug.
        while self._store.state is StoreState.OPEN:
            pass
        return self

    def finish(self) -> CloseReport:
        """Release the lease, wait for close() to return, and return its report."""
        self._release.set()
        self._closer.join(60)
        self._holder.join(60)
        [report] = self._reports
        return report

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._release.is_set():
            self.finish()


class StoppedLockHolder:
    """A peer process that took the write lock (``BEGIN IMMEDIATE``) and was then SIGSTOPped.

    ``with StoppedLockHolder(db):`` the database's write lock is held by a process that does
    nothing at all until the block ends (then it is continued, rolls back and exits).
    """

    def __init__(self, db: str) -> None:
        self._db = db
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> StoppedLockHolder:
        self._proc = start("hold_write", self._db)
        os.kill(self._proc.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)
        self._proc.communicate("go\n", timeout=30)


class HeldInThread:
    """Enter a context manager in another thread and stay inside it until this block ends.

    ``with HeldInThread(lambda: store.lease("x")):`` returns once the other thread holds it,
    and lets go (and joins the thread) on leaving.
    """

    def __init__(self, enter: Callable[[], AbstractContextManager[object]]) -> None:
        self._enter = enter
        self._holding = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with self._enter():
            self._holding.set()
            self._release.wait(60)

    def __enter__(self) -> HeldInThread:
        self._thread.start()
        assert self._holding.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._thread.join(30)
