"""A small pool of read connections, opened lazily, shared by the store's reading threads.

Reads never use the writer connection: a reader waiting on a busy lock must not hold up this
process's writes. An apsw connection runs one statement at a time, so each read takes a
connection for its duration; when all are out, the next read waits for one to come back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import apsw

__all__ = ["ReaderPool"]


class ReaderPool:
    """Up to ``size`` connections made by ``open_conn`` on first need."""

    def __init__(self, open_conn: Callable[[], apsw.Connection], size: int) -> None:
        self._open = open_conn
        self._size = size
        # ``with self._lock:``, not ``with self._cond:`` (see ``_leases.Gate``).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle: list[apsw.Connection] = []
        self._all: list[apsw.Connection] = []
        self._opening = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[apsw.Connection]:
        """Borrow a connection for one read.

        Raises:
            StoreCorruptError, StoreOpenError, StoreBusyError: opening a new one failed.
        """
        conn = self._take()
        try:
            yield conn
        finally:
            with self._lock:
                self._idle.append(conn)
                self._cond.notify()

    def _take(self) -> apsw.Connection:
        with self._lock:
            while not self._idle and len(self._all) + self._opening >= self._size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._opening += 1
        try:
            conn = self._open()
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._lock:
            self._opening -= 1
            self._all.append(conn)
        return conn

    def all(self) -> list[apsw.Connection]:
        """Every connection made so far, idle or in use (to interrupt them)."""
        with self._lock:
            return list(self._all)

    def forget_after_fork(self) -> list[apsw.Connection]:
        """In a forked child: forget every connection (returned, never to be used or closed).

        Takes no lock: a parent thread may have held it at the fork, and it would never be
        released here.
        """
        conns = self._all
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._all, self._idle, self._opening = [], [], 0
        return conns

    def take_all(self) -> list[apsw.Connection]:
        """Forget every connection and return them (to be closed, or kept after a fork)."""
        with self._lock:
            conns, self._all, self._idle = self._all, [], []
            return conns
