"""Run a call on a thread that no signal handler can raise into.

CPython runs Python-level signal handlers in the main thread only, between two bytecodes of
whatever that thread is executing. A handler that raises (``KeyboardInterrupt`` from Ctrl+C, a
``SystemExit`` from a SIGTERM handler, anything) therefore lands at an arbitrary point of the
main thread's code: between ``BEGIN IMMEDIATE`` and the ``try`` meant to roll it back, inside that
rollback, inside the commit hook. No arrangement of ``try``/``finally`` closes that window: the
exception can arrive in the ``finally`` itself.

So a write made from the main thread runs on a helper thread, and the main thread only waits
for it. A handler's exception interrupts the wait, never the transaction: the helper thread
always ends the transaction (committed or rolled back) and lets go of the locks. The waiting
caller then waits for that end (the write is bounded by its deadline) and re-raises the
exception, with a note saying whether the write was applied.

Rejected alternatives: ``pthread_sigmask`` in the main thread (a process-directed signal is then
delivered to another thread, and CPython still runs the handler in the main thread at its next
bytecode); swapping the handlers out around each write (``signal.signal`` is main-thread only,
costs a system call per signal number, and loses signals that arrive in between); trio-style
protection (it needs the library to own the handlers, and these are the application's).
Calls from other threads run inline: signal handlers never run there, and the hand-off costs
a thread switch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["OffMainThread"]

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("done", "error", "finished", "fn", "result")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Lock()
        self.done.acquire()  # released by the helper thread when fn has returned or raised
        self.finished = False  # set before ``done`` is released: the lock alone cannot tell
        # "already acquired by this waiter" (an exception right after its acquire returned)
        # from "not released yet", and acquiring it twice would wait forever.
        self.result: T | None = None
        self.error: BaseException | None = None


class OffMainThread:
    """A lazily started daemon thread that runs the main thread's calls one at a time."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job[object] | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], T]) -> T:
        """Return ``fn()``, run on the helper thread when called from the main thread.

        Raises:
            BaseException: what ``fn`` raised; or an exception a signal handler raised while
                the main thread waited, re-raised only once ``fn`` has finished (its outcome is
                added as a note on Python 3.11+).
        """
        if threading.current_thread() is not threading.main_thread():
            return fn()
        job: _Job[T] = _Job(fn)
        self._ensure_started()
        self._jobs.put(job)  # type: ignore[arg-type]
        try:
            job.done.acquire()
        except BaseException as interruption:
            _wait_out(job)
            _note(interruption, job)
            raise
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def stop(self) -> None:
        """Let the helper thread end once it has run what it was given (restarted on next use)."""
        with self._start_lock:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(
                    target=_serve, args=(self._jobs,), name=self._name, daemon=True
                )
                thread.start()
                self._thread = thread


def _serve(jobs: queue.SimpleQueue[_Job[object] | None]) -> None:
    while (job := jobs.get()) is not None:
        try:
            job.result = job.fn()
        except BaseException as err:  # handed to the caller, who re-raises it
            job.error = err
        finally:
            job.finished = True
            job.done.release()
        del job  # drop the last reference before waiting for the next one


def _wait_out(job: _Job[T]) -> None:
    # A second interruption while waiting is dropped: the first one is re-raised, and leaving
    # before the job ends would hide whether the write was applied.
    while True:
        try:
            if job.finished:
                return
            job.done.acquire()
        except BaseException:  # noqa: S112 - see above
            continue


def _note(interruption: BaseException, job: _Job[T]) -> None:
    add_note = getattr(interruption, "add_note", None)  # Python 3.11+
    if add_note is None:
        return
    if job.error is None:
        add_note("sessionstore: the interrupted call completed first (its write was applied)")
    else:
        add_note(f"sessionstore: the interrupted call failed first ({job.error!r})")
