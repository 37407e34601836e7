"""How one shutdown ends: who runs it, whether a signal caused it, what each later signal does.

Bookkeeping under one lock and nothing else (no I/O, no threads): the coordinator asks and acts
on the answer, so the decision table is tested on its own, with a fake clock. The rules:

- The first request claims nothing by itself: a signal *requests* the sequence (``REQUESTED``);
  whoever :meth:`Ending.claim` s it first runs it (a runner thread, ``atexit`` on the main
  thread, a ``shutdown()`` call). ``atexit`` and ``shutdown()`` claim from ``IDLE`` too.
- The first signal heard before :meth:`Ending.decide` makes the ending signal-caused, whoever
  runs the sequence; it never cuts the grace (SIGQUIT, which means "now", excepted).
- Later SIGINT/SIGQUIT, and SIGTERM when ``repeated_sigterm_skips_grace``, escalate: the first
  escalation cuts the grace, a SIGINT/SIGQUIT after that exits at once. Repeated SIGTERMs never
  exit at once: cutting the grace loses nothing, exiting mid-sequence loses the final state.
- A signal after the decision, when no signal caused the shutdown, is *late*: it changes
  nothing and is passed on once the sequence is over.

Rejected: letting the atexit path and the signal path each run the sequence with their own
cause (whichever won decided the outcome, and the first SIGINT after an atexit start counted as
the second).
"""

from __future__ import annotations

import enum
import signal
import threading
import time
from collections.abc import Callable

__all__ = ["Action", "Ending", "State"]

_ESCALATING = (signal.SIGINT, signal.SIGQUIT)


class State(str, enum.Enum):
    """Where the one shutdown is."""

    IDLE = "idle"
    REQUESTED = "requested"  # a signal asked; no runner has claimed the sequence yet
    RUNNING = "running"
    DONE = "done"


class Action(str, enum.Enum):
    """What the coordinator does about one signal."""

    START = "start"  # the first signal, nobody runs the sequence: start a runner
    ADOPT = "adopt"  # the first signal while atexit/shutdown() runs it: now signal-caused
    CUT = "cut"  # skip the rest of the grace
    HARD = "hard"  # exit at once
    LATE = "late"  # after the final state was decided: pass it on once the sequence is over
    IGNORE = "ignore"  # a repeated signal that changes nothing
    NONE = "none"  # the sequence is over: the passthrough handler deals with it


class Ending:
    """The state of one layer's shutdown. Thread-safe; every method is quick and never waits."""

    def __init__(
        self,
        *,
        repeated_sigterm_skips_grace: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repeated_sigterm_skips_grace = repeated_sigterm_skips_grace
        self._clock = clock
        self._lock = threading.Lock()
        self.state = State.IDLE
        self.cause = ""
        self.reason: str | None = None
        self.signum: int | None = None  # the first signal heard before the decision
        self.requested_at: float | None = None  # by the clock
        self.escalations = 0
        self.decided = False
        self._late: list[int] = []
        self._chained: set[int] = set()
        self._at_exit_started = False
        self._hard_exiting = False

    def claim(self, cause: str, reason: str | None = None) -> bool:
        """Take the runner's role if nobody has it; True when the caller must run the sequence.

        ``cause`` and ``reason`` are recorded only when nothing was requested before.
        """
        with self._lock:
            if self.state in (State.RUNNING, State.DONE):
                return False
            if self.state is State.IDLE:
                self.cause, self.reason = cause, reason
                self.requested_at = self._clock()
            self.state = State.RUNNING
            return True

    def hear(self, signum: int) -> list[Action]:
        """Record one delivery of ``signum``; what the coordinator must do, in order."""
        name = signal.Signals(signum).name
        with self._lock:
            if self.state is State.DONE:
                return [Action.NONE]
            if self.signum is None and self.decided:
                self._late.append(signum)
                return [Action.LATE]
            if self.signum is None:
                self.signum, self.cause = signum, name
                if self.state is State.IDLE:
                    self.state = State.REQUESTED
                    self.requested_at = self._clock()
                    actions = [Action.START]
                else:
                    actions = [Action.ADOPT]
                if signum == signal.SIGQUIT:  # "now": no grace (celery's cold shutdown)
                    self.escalations += 1
                    actions.append(Action.CUT)
                return actions
            if signum in _ESCALATING or (
                signum == signal.SIGTERM and self.repeated_sigterm_skips_grace
            ):
                self.escalations += 1
                if self.escalations == 1:
                    return [Action.CUT]
                if signum in _ESCALATING:
                    return [Action.HARD]
            return [Action.IGNORE]

    def decide(self) -> None:
        """The final state is being written: from now on a first signal is late."""
        with self._lock:
            self.decided = True

    def finish(self) -> None:
        """The sequence is over."""
        with self._lock:
            self.state = State.DONE

    def take_late(self) -> list[int]:
        """The late signals not yet passed on (each is returned once)."""
        with self._lock:
            late, self._late = self._late, []
            return late

    def take_chain(self) -> int | None:
        """The causing signal, the first time it is asked for: its app handler is due."""
        with self._lock:
            if self.signum is None or self.signum in self._chained:
                return None
            self._chained.add(self.signum)
            return self.signum

    def begin_hard_exit(self, signum: int | None) -> tuple[bool, bool, int | None]:
        """Start exiting at once: (first time?, decided?, the signal to end by)."""
        with self._lock:
            first_time = not self._hard_exiting
            self._hard_exiting = True
            return first_time, self.decided, self.signum if self.signum is not None else signum

    def mark_at_exit(self) -> None:
        """The layer's atexit hook has started."""
        with self._lock:
            self._at_exit_started = True

    def at_exit_will_claim(self, registered: bool) -> bool:
        """True when the atexit hook is registered and has not started (it will claim)."""
        with self._lock:
            return registered and not self._at_exit_started

    def overdue(self, budget_s: float) -> int | None:
        """The causing signal, when a signal-caused sequence runs past ``budget_s``."""
        with self._lock:
            running = self.state in (State.REQUESTED, State.RUNNING)
            signum, started = self.signum, self.requested_at
        if not running or signum is None or started is None:
            return None
        return signum if self._clock() - started > budget_s else None

    def remaining_s(self, deadline_s: float) -> float:
        """Seconds left of ``deadline_s`` since the request (all of it if none yet)."""
        started = self.requested_at
        if started is None:
            return deadline_s
        return max(0.0, started + deadline_s - self._clock())
