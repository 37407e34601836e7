"""Helpers for testing code that uses sessionstore: a fake clock, a leak check, a pid wait.

``import sessionstore`` does not import this module; import it from your tests::

    from sessionstore.testing import FakeClock, no_store_left_open, wait_pids_exited

* :class:`FakeClock` — a monotonic clock you move by hand, for ``SessionStore.open(...,
  clock=clock)``: the write retry deadline, the close drain deadline and the checkpoint
  schedule are measured on it.
* :func:`no_store_left_open` — fails a block (or a test, as a decorator) that leaves a store
  it opened unclosed, and closes it. :func:`open_stores` lists the open ones.
* :func:`wait_pids_exited` — wait for processes to exit on their pidfds (Linux), no sleep loop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator

import psutil

from ._proc import wait_pidfds
from ._store import SessionStore, live_stores

__all__ = [
    "FakeClock",
    "StoreLeftOpenError",
    "no_store_left_open",
    "open_stores",
    "wait_pids_exited",
]


class FakeClock:
    """A monotonic clock that moves only when told: ``advance()``, ``sleep()``, or ``step``.

    Pass it as ``SessionStore.open(path, clock=clock)``. Deadlines the store measures on its
    clock (a write retrying a locked database, ops queued while closing, the checkpoint
    schedule) then pass exactly when the test says. Waits the store does on the operating
    system (a SQLite busy timeout, the lease drain of ``close``) stay in real time.

    A frozen clock (``step=0``) never lets such a deadline pass by itself: a store retrying a
    locked database retries until the test advances the clock. ``step`` makes every reading
    move the clock forward, so every deadline passes after a few readings.

    Args:
        start: the first reading.
        step: how far each reading moves the clock after it is taken (>= 0).

    Raises:
        ValueError: a negative ``step``.
    """

    def __init__(self, start: float = 0.0, *, step: float = 0.0) -> None:
        if step < 0:
            raise ValueError("a monotonic clock never goes back: step must be >= 0")
        self._now = float(start)
        self._step = float(step)
        self._lock = threading.Lock()  # the store reads its clock from several threads
        self.readings = 0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        """The current time; then move it on by ``step``."""
        with self._lock:
            now = self._now
            self._now += self._step
            self.readings += 1
            return now

    @property
    def now(self) -> float:
        """The current time, without counting as a reading or stepping."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        Raises:
            ValueError: ``seconds`` < 0.
        """
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """A ``time.sleep`` stand-in: record the request and advance by it at once."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))


class StoreLeftOpenError(AssertionError):
    """A block checked by :func:`no_store_left_open` left stores open (they are closed now).

    Attributes:
        paths: the database paths of the stores left open.
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        super().__init__(f"{len(paths)} store(s) left open: {', '.join(map(repr, paths))}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.paths,))


def open_stores() -> list[SessionStore]:
    """The stores of this process that are open or closing (not yet CLOSED)."""
    return live_stores()


@contextlib.contextmanager
def no_store_left_open(*, close_timeout: float = 0.0) -> Iterator[None]:
    """Fail if a store opened inside the block is still open when the block ends.

    Usable as ``with no_store_left_open():`` or as a decorator on a test. Stores that were
    already open when the block began are not checked. A store left open is closed (with
    ``close_timeout``) before the error is raised, so one leak does not spill into later tests.
    If the block raises, that exception propagates and the check is skipped (the stores are
    closed all the same).

    Args:
        close_timeout: the timeout of the ``close()`` given to each store left open.

    Raises:
        StoreLeftOpenError: stores opened in the block were left open; they are closed now.
    """
    before = {id(s) for s in open_stores()}
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        left = [s for s in open_stores() if id(s) not in before]
        for store in left:
            store.close(timeout=close_timeout)
        if left and not failed:
            raise StoreLeftOpenError([s.path for s in left])


def wait_pids_exited(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every process in ``pids`` has exited, or ``timeout`` seconds pass.

    On Linux this sleeps on one pidfd per process (it turns readable when the process exits,
    whether or not its parent has reaped it yet), so it returns as soon as the last one ends.
    Rejected alternative: polling ``os.kill(pid, 0)`` in a sleep loop, which is late by up to
    its period and, for a child not yet reaped, never sees a zombie as gone. Where pidfds are
    unavailable it falls back to :func:`psutil.wait_procs`.

    Args:
        pids: processes to wait for; a pid with no process is taken as exited.
        timeout: seconds, >= 0.

    Returns:
        The pids still running at the timeout (empty: all exited).

    Raises:
        ValueError: a negative timeout.
    """
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    deadline = time.monotonic() + timeout
    fds: dict[int, int] = {}
    unpinned: list[int] = []
    try:
        for pid in set(pids):
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                continue  # already gone (reaped)
            except (AttributeError, OSError):
                unpinned.append(pid)  # no pidfd here (not Linux, old kernel, out of fds)
        alive = _wait_fds(fds, deadline)
        if unpinned:
            _, still = psutil.wait_procs(
                _processes(unpinned), timeout=max(0.0, deadline - time.monotonic())
            )
            for proc in still:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie has exited
                        alive.add(proc.pid)
        return alive
    finally:
        for fd in fds:
            os.close(fd)


def _wait_fds(fds: dict[int, int], deadline: float) -> set[int]:
    return {fds[fd] for fd in wait_pidfds(fds, deadline)}


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found
