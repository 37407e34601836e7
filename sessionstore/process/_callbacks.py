"""Exit callbacks: registered per phase, run in registration order, each within a budget.

Each callback runs on a worker (daemon) thread that the sequence waits for with a timeout: one
that raises is reported, one that outlasts its budget is reported and left running (a thread
cannot be killed), and either way the shutdown goes on. Two budgets bound the callbacks: each
callback's own (``timeout_s``) and one for all callbacks of a shutdown together (``total_s``),
so three hung callbacks cost ``total_s``, not three times ``timeout_s``. A callback reached once
the total is spent is not started and is reported as skipped.

One worker is started ahead of time (:meth:`ExitCallbacks.prepare`, called by ``install()``)
because Python 3.12 refuses to start threads while ``atexit`` handlers run: a shutdown at exit
then runs its callbacks on that worker, still within their budgets. A callback that hangs keeps
its worker, which ends once that callback returns; the next one needs a new thread, and when
none can be started it is skipped and reported. Rejected: running callbacks inline in the
coordinator, where one hung callback would hold the store open and the children alive forever
(and, at exit on 3.12, hang the process).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from ._reports import CallbackError, ShutdownPhase

__all__ = ["ExitCallbacks", "ShutdownCallback"]

log = logging.getLogger("sessionstore.process")

ShutdownCallback = Callable[[], object]
_Job = Callable[[], None]


class _Worker:
    """A daemon thread that runs the jobs handed to it, one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="sessionstore-callback", daemon=True)
        self.thread.start()  # RuntimeError while the interpreter is finalizing (3.12 atexit)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)


class ExitCallbacks:
    """The exit callbacks of one ProcessLayer. Thread-safe."""

    def __init__(self, timeout_s: float, total_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.total_s = timeout_s if total_s is None else total_s
        self._lock = threading.Lock()
        self._by_phase: dict[ShutdownPhase, list[ShutdownCallback]] = {
            phase: [] for phase in ShutdownPhase
        }
        self._idle: list[_Worker] = []
        self._spent = 0.0
        self._local = threading.local()

    @property
    def in_callback(self) -> bool:
        """True on a thread that is running one of these callbacks."""
        return bool(getattr(self._local, "in_callback", False))

    @property
    def spent_s(self) -> float:
        """Seconds of the total budget used so far."""
        return self._spent

    def add(self, fn: ShutdownCallback, phase: ShutdownPhase | str) -> ShutdownCallback:
        """Register ``fn`` for ``phase``.

        Raises:
            ValueError: ``phase`` is not a phase name.
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"callback must be callable, not {type(fn).__name__}")
        the_phase = ShutdownPhase(phase)
        with self._lock:
            self._by_phase[the_phase].append(fn)
        return fn

    def prepare(self) -> None:
        """Start one idle worker now, while threads can still be started. Idempotent."""
        with self._lock:
            if self._idle:
                return
        try:
            worker = _Worker()
        except RuntimeError:
            return
        with self._lock:
            self._idle.append(worker)

    def run(
        self,
        phase: ShutdownPhase,
        errors: list[CallbackError],
        extra: Sequence[tuple[str, ShutdownCallback]] = (),
    ) -> float:
        """Run ``extra`` then the phase's callbacks in order; append failures to ``errors``.

        Args:
            phase: the phase whose callbacks run.
            errors: where failures, timeouts and skipped callbacks are reported.
            extra: (name, callable) pairs run first, under the same budgets (chained signal
                handlers).

        Returns:
            How long the phase took, in seconds.
        """
        t = time.monotonic()
        with self._lock:
            callbacks = [*extra, *((_name(fn), fn) for fn in self._by_phase[phase])]
        for name, fn in callbacks:
            error = self._call(name, fn, phase)
            if error is not None:
                errors.append(error)
        return time.monotonic() - t

    def _call(self, name: str, fn: ShutdownCallback, phase: ShutdownPhase) -> CallbackError | None:
        budget = min(self.timeout_s, self.total_s - self._spent)
        if budget <= 0:
            log.error("%s callback %s skipped: the callbacks' budget is spent", phase.value, name)
            return CallbackError(
                phase=phase,
                callback=name,
                error=f"not run: the {self.total_s} s budget of all callbacks was spent",
                timed_out=True,
            )
        worker = self._worker()
        if worker is None:
            log.error("%s callback %s skipped: no thread can be started", phase.value, name)
            return CallbackError(
                phase=phase,
                callback=name,
                error="not run: no thread could be started (interpreter exiting) and the "
                "worker is held by a callback that outlasted its budget",
                timed_out=True,
            )
        box: dict[str, BaseException] = {}
        finished = threading.Event()

        def job() -> None:
            self._local.in_callback = True
            try:
                fn()
            except BaseException as err:  # reported, never propagated into the sequence
                box["error"] = err
            finally:
                self._local.in_callback = False
                finished.set()

        t = time.monotonic()
        worker.submit(job)
        done = finished.wait(budget)
        self._spent += time.monotonic() - t
        if not done:
            # The worker stays with the callback; it ends once the callback returns (the stop
            # queues behind the job). Never handed out again, it would otherwise wait for a job
            # for the rest of the process, a thread left behind at every such shutdown.
            worker.stop()
            log.error(
                "%s callback %s outlasted its %.1f s budget; going on", phase.value, name, budget
            )
            return CallbackError(
                phase=phase, callback=name, error=f"timed out after {budget:.3g} s", timed_out=True
            )
        with self._lock:
            self._idle.append(worker)
        err = box.get("error")
        if err is None:
            return None
        log.error("%s callback %s raised; going on", phase.value, name, exc_info=err)
        return CallbackError(phase=phase, callback=name, error=repr(err))

    def _worker(self) -> _Worker | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return _Worker()
        except RuntimeError:  # interpreter finalizing (Python 3.12 during atexit)
            return None

    def close(self) -> None:
        """Stop the idle workers (one held by a callback past its budget ends when it returns)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()


def _name(fn: ShutdownCallback) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))
