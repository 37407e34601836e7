"""Exit callbacks: registered per phase, run in registration order, each within a budget.

Each callback runs on its own daemon thread that the sequence joins with a timeout: one that
raises is reported, one that outlasts its budget is reported and left running (a thread cannot
be killed), and either way the shutdown goes on. Rejected: running callbacks inline in the
coordinator, where one hung callback would hold the store open and the children alive forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._reports import CallbackError, ShutdownPhase

__all__ = ["ExitCallbacks", "ShutdownCallback"]

log = logging.getLogger("sessionstore.process")

ShutdownCallback = Callable[[], object]


class ExitCallbacks:
    """The exit callbacks of one ProcessLayer. Thread-safe."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._by_phase: dict[ShutdownPhase, list[ShutdownCallback]] = {
            phase: [] for phase in ShutdownPhase
        }
        self._local = threading.local()

    @property
    def in_callback(self) -> bool:
        """True on a thread that is running one of these callbacks."""
        return bool(getattr(self._local, "in_callback", False))

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

    def run(self, phase: ShutdownPhase, errors: list[CallbackError]) -> float:
        """Run the phase's callbacks in order; append their failures to ``errors``.

        Returns:
            How long the phase took, in seconds.
        """
        t = time.monotonic()
        with self._lock:
            callbacks = list(self._by_phase[phase])
        for fn in callbacks:
            error = self._call(fn, phase)
            if error is not None:
                errors.append(error)
        return time.monotonic() - t

    def _call(self, fn: ShutdownCallback, phase: ShutdownPhase) -> CallbackError | None:
        name = getattr(fn, "__qualname__", repr(fn))
        box: dict[str, BaseException] = {}

        def target() -> None:
            self._local.in_callback = True
            try:
                fn()
            except BaseException as err:  # reported, never propagated into the sequence
                box["error"] = err

        thread = threading.Thread(target=target, name=f"sessionstore-{phase.value}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter finalizing: no new threads, run it here unbounded
            target()
        else:
            thread.join(self.timeout_s)
            if thread.is_alive():
                log.error(
                    "%s callback %s outlasted its %.1f s budget; going on",
                    phase.value,
                    name,
                    self.timeout_s,
                )
                return CallbackError(
                    phase=phase,
                    callback=name,
                    error=f"timed out after {self.timeout_s} s",
                    timed_out=True,
                )
        err = box.get("error")
        if err is None:
            return None
        log.error("%s callback %s raised; going on", phase.value, name, exc_info=err)
        return CallbackError(phase=phase, callback=name, error=repr(err))
