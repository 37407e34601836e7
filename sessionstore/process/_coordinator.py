"""ProcessLayer: one ordered, exactly-once shutdown for an orchestrator and its child trees.

Every entry point (a signal, ``atexit``, ``shutdown()`` from any thread, the context manager)
funnels into one state machine, ``IDLE → REQUESTED → RUNNING → DONE``, guarded by a lock. A
signal only *requests* the sequence and tries to start a runner thread; whoever claims the
request first runs it (that thread, ``atexit`` on the main thread, or a ``shutdown()`` call), so
the sequence runs exactly once even when no thread can be started (Python 3.12 during
``atexit``). The sequence is::

    before_children callbacks → stop accepting spawns → SIGTERM each child's group → wait on
    pidfds up to grace_s → freeze, SIGKILL, re-enumerate until nothing new → verify gone within
    kill_verify_s → (each child's row records how it ended) → after_children callbacks →
    session PAUSED (signal) / STOPPED (otherwise) + final checkpoint → before_close callbacks →
    store.close(), last → exit by the signal that caused it.

How the ending is decided, whoever runs it: the *first* signal the layer hears before the final
state is written makes the shutdown signal-caused (session PAUSED, the process ends by that
signal), even when ``atexit`` or ``shutdown()`` started the sequence; the first signal never cuts
the grace. Later SIGINT/SIGQUIT (and SIGTERM, unless ``repeated_sigterm_skips_grace=False``) cut
the grace; a third SIGINT/SIGQUIT exits at once, by the signal. A signal that arrives after the
final state was written does not change it; once the sequence is over it goes to the handler
that was there before ``install()`` (by default the process then ends by it).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from .._identity import ProcessIdentity
from .._models import ChildProcess, SessionStatus
from ..errors import SessionStoreError
from ._adopted import Adoptions
from ._callbacks import ExitCallbacks, ShutdownCallback
from ._children import AnyPopen, ChildRegistry, row_state
from ._ending import Action, Ending, State
from ._os import exit_by_signal, is_child_subreaper, set_child_subreaper
from ._pin import Pin
from ._recorded import gather_roots
from ._reports import CallbackError, ChildOutcome, ShutdownPhase, ShutdownReport
from ._signals import CHECK_INTERVAL_S, SignalRelay
from ._terminate import TerminationResult, terminate_trees, wait_exited
from ._tree import Scope, descends_from_me, marker_member, marker_value

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._store import SessionStore

__all__ = ["ProcessLayer"]

log = logging.getLogger("sessionstore.process")

_RECORD_WAIT_S = 2.0  # the exit watcher writes each end within milliseconds; this is a backstop
_SCAN_SLACK_S = 0.5  # enumerating and signalling the trees, outside the grace and verify waits
_HARD_EXIT_S = 1.0  # the store steps of an exit at once (journal, pause), at most
_EXIT_SLACK_S = _HARD_EXIT_S + 0.5  # from the watchdog's decision to the process being gone
# How long before the watchdog (beyond a write deadline) a late sequence's status is secured:
# the watchdog's tick, and an exit's slack for a loaded machine.
_SECURE_LEAD_S = CHECK_INTERVAL_S + _EXIT_SLACK_S


def _check_seconds(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


class ProcessLayer:
    """Child processes of one session, and the one ordered shutdown that ends them.

    Args:
        store: the open :class:`~sessionstore.SessionStore` the session lives in.
        session_id: the session whose children these are.
        grace_s: how long children get to exit after SIGTERM before SIGKILL.
        kill_verify_s: how long SIGKILL may take to be verified; what remains is reported
            ``unkillable`` and does not block exit.
        callback_timeout_s: budget of each exit callback; one that outlasts it is logged and
            left running on its (daemon) thread while the sequence goes on.
        callbacks_budget_s: budget of all exit callbacks of one shutdown together (chained
            signal handlers included); None means twice ``callback_timeout_s``, so one hung
            callback leaves the others a full budget. A callback reached once it is spent is
            skipped and reported.
        close_timeout_s: passed to ``store.close()``; None uses the store's own.
        exit_on_signal: after a signal-caused shutdown, end the process by that signal (default
            disposition, re-raised) so the parent sees the real cause; ``os._exit(128+N)`` when
            that does not work (PID 1). False leaves exiting to the caller (see :meth:`wait`).
        repeated_sigterm_skips_grace: a SIGTERM during the grace cuts it short like a second
            SIGINT (systemd, docker and ``timeout`` only ever send SIGTERM, then SIGKILL).
        subreaper: on Linux, make this process a child subreaper at the first ``install``,
            ``spawn`` or ``track``, so descendants that ``setsid`` or double-fork are
            re-parented to us and stay findable; undone after shutdown if we set it.
        cgroup: where this process can create a cgroup v2 child of its own cgroup (root, or
            a delegated subtree; checked at the first ``spawn``), start the children inside it
            and end them through it (freeze, ``cgroup.kill``, ``populated 0``): complete by
            construction. Elsewhere, or False, the subreaper + marker + freeze tier alone.
            ``ShutdownReport.enumeration`` says which was used.
        close_store: close the store as the last step (the contract); False for hosts that
            close it themselves.
        checkpoint_name: name of the final checkpoint written at shutdown.

    Raises:
        ValueError: a duration is negative or not finite.
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        *,
        grace_s: float = 5.0,
        kill_verify_s: float = 2.0,
        callback_timeout_s: float = 5.0,
        callbacks_budget_s: float | None = None,
        close_timeout_s: float | None = None,
        exit_on_signal: bool = True,
        repeated_sigterm_skips_grace: bool = True,
        subreaper: bool = True,
        cgroup: bool = True,
        close_store: bool = True,
        checkpoint_name: str = "shutdown",
    ) -> None:
        self.grace_s = _check_seconds("grace_s", grace_s)
        self.kill_verify_s = _check_seconds("kill_verify_s", kill_verify_s)
        self.callback_timeout_s = _check_seconds(
            "callback_timeout_s", callback_timeout_s, positive=True
        )
        self.callbacks_budget_s = (
            2 * self.callback_timeout_s
            if callbacks_budget_s is None
            else _check_seconds("callbacks_budget_s", callbacks_budget_s)
        )
        self.close_timeout_s = (
            None if close_timeout_s is None else _check_seconds("close_timeout_s", close_timeout_s)
        )
        self.exit_on_signal = exit_on_signal
        self.checkpoint_name = checkpoint_name
        self._store = store
        self._session_id = session_id
        self._close_store = close_store
        self._want_subreaper = subreaper
        self._set_subreaper = False
        owner = ProcessIdentity.current()
        self._owner_pid = owner.pid
        self._owner = owner
        self._children = ChildRegistry(
            store, session_id, marker_value(session_id, owner), cgroup=cgroup
        )
        self._relay = SignalRelay(self._on_signal, owner=session_id, on_tick=self._tick)
        self._callbacks = ExitCallbacks(self.callback_timeout_s, self.callbacks_budget_s)
        self._lock = threading.Lock()
        self._ending = Ending(repeated_sigterm_skips_grace=repeated_sigterm_skips_grace)
        self._done = threading.Event()
        self._report: ShutdownReport | None = None
        self._escalate_r, self._escalate_w = os.pipe()
        os.set_blocking(self._escalate_w, False)
        self._atexit_registered = False
        self._active_pins: list[Pin] = []
        self._adoptions = Adoptions()
        self._status_recorded = threading.Event()  # the final status was applied or journaled
        self._securing = False
        self._is_member = marker_member(Scope(session_id, owner=owner))
        self._sweep_lock = threading.Lock()  # one sweep at a time; none while a shutdown runs
        self._loop: asyncio.AbstractEventLoop | None = None  # running in main at install()

    # ------------------------------------------------------------------ setup

    @property
    def session_id(self) -> str:
        """The session whose children this layer owns."""
        return self._session_id

    @property
    def state(self) -> str:
        """``"idle"``, ``"running"`` (shutdown requested or under way) or ``"done"``."""
        state = self._ending.state
        return State.RUNNING.value if state is State.REQUESTED else state.value

    @property
    def repeated_sigterm_skips_grace(self) -> bool:
        """Whether a SIGTERM during the grace cuts it short (see the constructor)."""
        return self._ending.repeated_sigterm_skips_grace

    @property
    def report(self) -> ShutdownReport | None:
        """The shutdown report, once shutdown is done."""
        return self._report

    @property
    def shutdown_deadline_s(self) -> float:
        """The longest a signal-caused shutdown can take, from the signal to the process's end.

        The sum of the phase budgets: ``callbacks_budget_s`` + ``grace_s`` + ``kill_verify_s``
        + the record backstop (2 s) + the final state's two writes (twice the store's
        ``write_deadline_s``) + the close (``close_timeout_s``, or the store's), plus 3 s of
        slack: scanning (0.5 s), the watchdog's tick (1 s) and an exit at once (1.5 s). A
        watchdog enforces it: a signal-caused shutdown still running past the phase budgets
        SIGKILLs the children it pinned, journals what is pending (for at most 1 s) and ends
        the process by the signal. Set the supervisor's
        stop timeout above it (``TimeoutStopSec``, ``docker stop --time``/``--stop-timeout``).
        """
        return self._budget_s() + CHECK_INTERVAL_S + _EXIT_SLACK_S

    def _budget_s(self) -> float:
        config = self._store.config
        close = 0.0
        if self._close_store:
            close = config.close_timeout_s if self.close_timeout_s is None else self.close_timeout_s
        return (
            self.callbacks_budget_s
            + self.grace_s
            + self.kill_verify_s
            + _RECORD_WAIT_S
            + 2 * config.write_deadline_s
            + close
            + _SCAN_SLACK_S
        )

    def install(self) -> ProcessLayer:
        """Handle SIGINT, SIGTERM, SIGHUP (and SIGQUIT) and run shutdown at exit. Idempotent.

        The handlers only wake a listener thread (through ``signal.set_wakeup_fd`` and the
        Python-level handler), so shutdown starts promptly even while the main thread is blocked
        in a long C call that releases the GIL. Inside ``asyncio.run()`` they are plain
        ``signal`` handlers too, so they outlive the loop. SIGINT/SIGHUP inherited as ignored
        stay ignored. A Python handler found in place is chained: it is called once, with
        ``(signum, None)``, in the ``before_children`` phase of a shutdown that signal caused
        (in the loop, when ``install()`` ran inside a running asyncio loop).
        A handler set later for one of these signals is detected and warned about (at
        ``spawn``/``track``, every second on the listener, and in the report).

        Only one layer per process can be installed: a second one would take the handlers
        silently and orphan the first layer's children.

        Returns:
            self, for chaining.

        Raises:
            RuntimeError: not called from the main thread; nothing was installed.
            LayerAlreadyInstalledError: another ProcessLayer of this process is installed;
                nothing was installed.
        """
        self._relay.install()
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._callbacks.prepare()
        self._become_subreaper()
        with self._lock:
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                self._atexit_registered = True
        return self

    def uninstall(self) -> None:
        """Restore the previous signal handlers and drop the atexit hook. Idempotent.

        Children keep running and stay tracked; :meth:`shutdown` still works. The callback
        worker started by :meth:`install` (for a shutdown at exit) is stopped: a layer installed
        and uninstalled many times leaves no thread behind, and a later :meth:`shutdown` starts
        a worker when it needs one (except during interpreter exit on Python 3.12+, where no
        thread can start: its callbacks are then reported as not run).

        Raises:
            RuntimeError: not called from the main thread; nothing was changed.
        """
        self._relay.uninstall()
        with self._lock:
            if self._atexit_registered:
                atexit.unregister(self._at_exit)
                self._atexit_registered = False
        self._callbacks.close()

    def _become_subreaper(self) -> None:
        with self._lock:
            if self._ending.state is not State.IDLE:
                return  # shutdown owns the setting now (and undoes it when it is done)
            if self._want_subreaper and not self._set_subreaper and not is_child_subreaper():
                self._set_subreaper = set_child_subreaper(True)

    def spawn(self, args: Any, **popen_kwargs: Any) -> AnyPopen:
        """Start a child process in its own process group and record it in the store.

        The child gets ``process_group=0`` (``start_new_session=True`` before Python 3.11)
        unless the caller chose either; a pidfd is pinned right after start; the row records
        pid, start ticks, boot id, pgid and argv; the exit watcher records its end with its
        exit code. ``Popen.wait()``/``poll()`` keep working (its status is never stolen).

        Args:
            args: the command, as for ``subprocess.Popen``.
            **popen_kwargs: passed to ``subprocess.Popen``.

        Returns:
            The ``subprocess.Popen``.

        Raises:
            ShutdownInProgressError: shutdown stopped accepting children; nothing was started.
            OSError, ValueError: from ``Popen``; nothing was started.
            SessionStoreError: the store refused the row; the child was killed and reaped.
        """
        self._become_subreaper()
        self._relay.check_handlers()
        return self._children.spawn(args, popen_kwargs)

    def track(self, target: int | AnyPopen) -> ChildProcess:
        """Adopt a process started elsewhere (a pid, or a Popen whose status it then reads).

        Its identity is captured, a pidfd opened and the identity verified again after that;
        it is recorded and watched like a spawned child, and ended by shutdown.

        Returns:
            The recorded child row.

        Raises:
            UnsafeSignalError: pid <= 1 or this very process.
            ProcessLookupError: no such process, or its identity changed while it was pinned.
            ShutdownInProgressError: shutdown stopped accepting children.
        """
        self._become_subreaper()
        self._relay.check_handlers()
        return self._children.track(target)

    def on_shutdown(
        self,
        fn: ShutdownCallback,
        phase: ShutdownPhase | str = ShutdownPhase.BEFORE_CHILDREN,
    ) -> ShutdownCallback:
        """Register an exit callback, run once in ``phase`` in registration order.

        A callback that raises or outlasts its budget (``callback_timeout_s``, and what is left
        of ``callbacks_budget_s``) is logged and reported in ``ShutdownReport.callback_errors``;
        the sequence goes on. Callbacks may write to the store (it is open until after
        ``before_close``); calling ``shutdown()`` from one raises RuntimeError.

        Returns:
            ``fn``, so this works as a decorator argument.

        Raises:
            ValueError: ``phase`` is not a phase name.
            TypeError: ``fn`` is not callable.
        """
        return self._callbacks.add(fn, phase)

    # ------------------------------------------------------------------ entry points

    def shutdown(self, reason: str | None = None) -> ShutdownReport:
        """Run the shutdown sequence once; every caller, from any thread, gets the same report.

        Args:
            reason: a note for the report and the final checkpoint.

        Returns:
            The report of the one shutdown (a later caller waits for it to finish).

        Raises:
            RuntimeError: called from one of this layer's own exit callbacks, or from a forked
                child of the process that made the layer.
            TimeoutError: another thread runs the sequence and it did not finish within
                :attr:`shutdown_deadline_s`; it goes on.

        Afterwards the store is closed (unless ``close_store=False``), the session is STOPPED
        (PAUSED when a signal arrived before the final state), every child row records how it
        ended, and new ``spawn``/``track`` calls raise. When a signal caused it and
        ``exit_on_signal`` is set, the process ends by that signal instead of returning.
        Installed handlers stay in place but forward each signal to the handler that was there
        before us; :meth:`uninstall` removes them.
        """
        if self._callbacks.in_callback:
            raise RuntimeError("shutdown() called from a shutdown callback")
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                f"this ProcessLayer belongs to process {self._owner_pid}; a forked child must "
                "not end its parent's children"
            )
        if self._ending.claim("explicit", reason):
            self._run()
            self._end_process()
        elif not self._done.wait(self._remaining_s()):
            raise TimeoutError(
                f"the shutdown of session {self._session_id!r} did not finish within "
                f"{self.shutdown_deadline_s:.1f} s"
            )
        report = self._report
        assert report is not None
        return report

    def wait(self, timeout: float | None = None) -> ShutdownReport | None:
        """Wait for a shutdown begun elsewhere (a signal, another thread) to finish.

        Returns:
            The report, or None if none finished within ``timeout`` seconds.
        """
        self._done.wait(timeout)
        return self._report

    def __enter__(self) -> ProcessLayer:
        """Install the handlers (when in the main thread) and return the layer."""
        if threading.current_thread() is threading.main_thread():
            self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down (reason names the exception, if any) and restore the handlers."""
        self.shutdown(reason=None if exc is None else f"exception: {exc!r}")
        if threading.current_thread() is threading.main_thread():
            self.uninstall()

    # The ending's facts, read where the sequence (and its final state) needs them.
    @property
    def _signum(self) -> int | None:
        return self._ending.signum

    @property
    def _cause(self) -> str:
        return self._ending.cause

    @property
    def _reason(self) -> str | None:
        return self._ending.reason

    def _remaining_s(self) -> float:
        """Seconds left of the deadline of the sequence under way (the whole of it if none)."""
        return self._ending.remaining_s(self.shutdown_deadline_s)

    def _at_exit(self) -> None:
        # A forked child that exits normally runs the atexit hooks it inherited: it must not
        # end its parent's children or close its parent's store.
        if os.getpid() != self._owner_pid:
            return
        self._ending.mark_at_exit()
        if self._ending.claim("atexit"):
            self._run()
        elif not self._done.wait(self._remaining_s()):
            # The runner is stuck past every budget: end the process now, as the watchdog would.
            self._hard_exit(self._signum, "the shutdown outlasted its deadline at exit")
        self._end_process()

    def _on_signal(self, signum: int) -> None:
        """Runs on the listener thread (or a draining thread) once per handled delivery."""
        name = signal.Signals(signum).name
        for action in self._ending.hear(signum):
            if action is Action.START:
                self._start_runner()
            elif action is Action.ADOPT:
                log.info("%s during the shutdown already under way: it ends by %s", name, name)
            elif action is Action.CUT:
                log.warning("%s again: skipping the rest of the grace period, killing now", name)
                with contextlib.suppress(OSError):
                    os.write(self._escalate_w, b"!")
            elif action is Action.HARD:
                self._hard_exit(signum, f"{name} a third time")
            elif action is Action.LATE:
                log.info("%s after the final state was written: passed on after shutdown", name)
            elif action is Action.IGNORE:
                log.info("%s during shutdown ignored (already shutting down)", name)

    def _start_runner(self) -> None:
        try:
            threading.Thread(
                target=self._run_requested, name="sessionstore-shutdown", daemon=True
            ).start()
            return
        except RuntimeError:  # interpreter finalizing (Python 3.12 while atexit handlers run)
            pass
        if self._ending.at_exit_will_claim(self._atexit_registered):
            return  # _at_exit claims the request on the main thread
        self._run_requested()  # inline, here: nobody else would run it

    def _run_requested(self) -> None:
        if self._ending.claim(""):
            self._run()
            self._end_process()

    def _tick(self) -> None:
        """The watchdog, run by the listener every second; then the sweep of adopted zombies.

        Before the watchdog cuts a late signal-caused sequence, a first threshold secures its
        final status (see :meth:`_secure_final_state`).
        """
        budget = self._budget_s()
        signum = self._ending.overdue(budget)
        if signum is not None:
            self._hard_exit(signum, "the shutdown outlasted its deadline")
        # The status write gets a write deadline, the watchdog's tick and an exit's slack
        # before the cut (half the budget at least: it is the sequence's job first).
        secure_at = max(budget - self._store.config.write_deadline_s - _SECURE_LEAD_S, budget / 2)
        if self._ending.overdue(secure_at) is not None:
            self._secure_final_state()
        self._reap_adopted()

    def _secure_final_state(self) -> None:
        """A late signal-caused sequence: write its final status now, on a thread of its own.

        The watchdog's exit gives the store at most 1 s, and a store behind a stopped peer's
        lock needs a whole write deadline to give up and journal: started that late, the
        PAUSED write was lost and the session stayed ACTIVE with its owner gone. Started here,
        ahead of the sequence's own final-state phase, it lands or is journaled before the cut.
        The status alone is written out of order (the sequence is over its budget anyway; a
        signal-caused ending is PAUSED whatever happens next); the children's rows and the
        final checkpoint stay the sequence's. Rejected: writing PAUSED when the sequence starts
        (it would say "paused" while children still run, and break the documented order).
        """
        with self._lock:
            if self._securing or self._status_recorded.is_set():
                return
            self._securing = True
        log.warning("the shutdown runs late: recording the session's final status now")
        with contextlib.suppress(RuntimeError):  # no thread during atexit: the exit still tries
            threading.Thread(
                target=self._record_status,
                args=([],),
                name="sessionstore-final-status",
                daemon=True,
            ).start()

    def _reap_adopted(self) -> int:
        """Reap the zombies of orphans this subreaper adopted (never a child it forked).

        Run every second by the listener while no shutdown is under way; cheap (the kernel's
        child lists, not a pass over every process). See :mod:`._adopted` for how an adopted
        orphan is told from the application's own children.

        Returns:
            How many zombies were reaped.
        """
        with self._sweep_lock:
            if self._ending.state is not State.IDLE or not is_child_subreaper():
                return 0
            roots = [(p.pid, p.start_ticks) for p in self._children.pins()]
            return self._adoptions.sweep(roots, self._is_member)

    def _hard_exit(self, signum: int | None, why: str) -> None:
        """SIGKILL what we pinned, journal what is pending, pause the session, end by the signal.

        The store steps run on a helper thread joined for at most ``_HARD_EXIT_S``: a store
        stuck behind a stopped peer's lock must not hold the exit. When the watchdog cuts a
        late sequence, its final status was secured ahead of the cut (:meth:`_tick`), so only
        what is pending is journaled here. Otherwise (a third SIGINT) the store is closed with
        no wait (what is in flight is journaled), so the pause write goes to the journal and the
        next ``open()`` applies it; a store stuck behind a stopped peer's lock may leave the
        session unpaused then. Where no thread can be started (Python 3.12 during atexit) the
        store steps are skipped rather than run unbounded.
        """
        first_time, decided, first = self._ending.begin_hard_exit(signum)
        if not first_time:
            return
        log.error("%s: exiting now", why)
        for pin in [*self._children.pins(), *self._active_pins]:
            with contextlib.suppress(Exception):
                if not pin.send_group(signal.SIGKILL):
                    pin.send(signal.SIGKILL)

        securing = self._securing  # the final status is already on its way (see _tick)

        def store_steps() -> None:
            with contextlib.suppress(Exception):
                self._store.journal_pending()
            if not decided and not securing and first is not None:
                with contextlib.suppress(Exception):
                    self._store.close(timeout=0)
                with contextlib.suppress(Exception):
                    self._store.pause_session(self._session_id)

        until = time.monotonic() + _HARD_EXIT_S
        try:
            helper = threading.Thread(target=store_steps, name="sessionstore-exit", daemon=True)
            helper.start()
        except RuntimeError:
            log.error("no thread can be started: the store is left as it is")
        else:
            helper.join(_HARD_EXIT_S)
            if securing:
                self._status_recorded.wait(max(0.0, until - time.monotonic()))
        if first is None:
            os._exit(1)
        exit_by_signal(first)

    def _escalated(self) -> bool:
        return self._ending.escalations > 0

    def _end_process(self) -> None:
        """After the sequence: end by the signal that caused it, or pass late signals on."""
        signum = self._signum
        if signum is not None and self.exit_on_signal:
            exit_by_signal(signum)
        for late in self._ending.take_late():
            # Our handler is in passthrough now: the signal reaches the previous handler.
            with contextlib.suppress(OSError):
                os.kill(os.getpid(), late)

    # ------------------------------------------------------------------ the sequence

    def _chained_handlers(self) -> list[tuple[str, Callable[[], object]]]:
        """The app's own handler for the causing signal, once (see :meth:`install`)."""
        self._relay.drain()
        signum = self._ending.take_chain()
        if signum is None:
            return []
        previous = self._relay.previous_handler(signum)
        if previous is None:
            return []
        name = getattr(previous, "__qualname__", repr(previous))
        loop = self._loop
        budget = self.callback_timeout_s

        def call(handler: Callable[[int, FrameType | None], Any] = previous) -> None:
            if loop is None or loop.is_closed():
                handler(signum, None)
                return
            # A handler found inside a running loop (asyncio.run()'s own SIGINT handler, which
            # cancels the main task) touches loop objects: it runs in the loop, as a signal
            # handler would have. Rejected: calling it on this thread (Task.cancel is not
            # thread-safe).
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def in_loop() -> None:
                try:
                    handler(signum, None)
                except BaseException as err:  # reported by the callback runner, not the loop
                    done.set_exception(err)
                else:
                    done.set_result(None)

            try:
                loop.call_soon_threadsafe(in_loop)
            except RuntimeError:  # the loop closed meanwhile: call it here
                handler(signum, None)
                return
            done.result(timeout=budget)

        return [(f"{signal.Signals(signum).name} handler {name}", call)]

    def _run(self) -> None:
        started_at = time.time()
        t0 = time.monotonic()
        phases: dict[str, float] = {}
        errors: list[str] = []
        callback_errors: list[CallbackError] = []
        result: TerminationResult | None = None
        outcomes: list[ChildOutcome] = []
        status: SessionStatus | None = None
        close_report = None
        try:
            phases["before_children"] = self._callbacks.run(
                ShutdownPhase.BEFORE_CHILDREN, callback_errors, self._chained_handlers()
            )

            self._children.stop_accepting()
            roots, outcomes, result = self._end_children(errors)
            phases.update(result.durations)
            t = time.monotonic()
            outcomes = [*self._record_roots(roots, errors), *outcomes]
            phases["record_children"] = time.monotonic() - t

            phases["after_children"] = self._callbacks.run(
                ShutdownPhase.AFTER_CHILDREN, callback_errors, self._chained_handlers()
            )

            t = time.monotonic()
            self._decide()
            status = self._final_state(outcomes, result, errors)
            phases["final_state"] = time.monotonic() - t

            phases["before_close"] = self._callbacks.run(
                ShutdownPhase.BEFORE_CLOSE, callback_errors
            )
        except Exception as err:  # a bug must not skip the close: the store is closed regardless
            log.exception("shutdown sequence failed; closing the store anyway")
            errors.append(f"sequence: {err!r}")
        finally:
            self._decide()
            t = time.monotonic()
            if self._close_store:
                try:
                    close_report = self._store.close(timeout=self.close_timeout_s)
                except Exception as err:
                    log.exception("store.close() failed")
                    errors.append(f"close: {err!r}")
            phases["close"] = time.monotonic() - t
            self._children.close()
            self._callbacks.close()
            if self._set_subreaper:
                set_child_subreaper(False)
                self._set_subreaper = False
            duration = time.monotonic() - t0
            report = ShutdownReport(
                session_id=self._session_id,
                cause=self._cause,
                signal_number=self._signum,
                reason=self._reason,
                started_at=started_at,
                duration_s=duration,
                phases=phases,
                children=[o for o in outcomes if o.source != "descendant"],
                descendants=self._descendant_outcomes(result),
                escalated_to_sigkill=bool(result and result.escalated_to_sigkill),
                escalated_by_signal=bool(result and result.escalated_by_request),
                **self._verification(result, outcomes),
                session_status=status,
                close_report=close_report,
                callback_errors=callback_errors,
                errors=errors,
                deadline_s=self.shutdown_deadline_s,
                deadline_exceeded=duration > self.shutdown_deadline_s,
                handlers_replaced=sorted(self._relay.check_handlers().values()),
            )
            self._report = report
            self._ending.finish()
            self._relay.passthrough()
            self._done.set()
            log.info(
                "shutdown (%s) done in %.3f s: %d children, sigkill=%s, no orphans=%s",
                report.cause,
                report.duration_s,
                len(report.children),
                report.escalated_to_sigkill,
                report.verified_no_orphans,
            )
            for fd in (self._escalate_r, self._escalate_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _decide(self) -> None:
        """From here on the ending is fixed: signals heard so far count, later ones are late."""
        self._relay.drain()
        self._ending.decide()

    def _end_children(
        self, errors: list[str]
    ) -> tuple[list[Pin], list[ChildOutcome], TerminationResult]:
        """Gather the roots and end their trees; a failure degrades, never skips the kill."""
        try:
            roots, outcomes = gather_roots(self._store, self._session_id, self._children, errors)
        except Exception as err:
            log.exception("reading the recorded children failed; ending our own children")
            errors.append(f"gathering children: {err!r}")
            roots, outcomes = self._children.pins(), []
        self._active_pins = roots
        try:
            with self._sweep_lock:  # a sweep in progress finishes first: nothing reaps a walk
                pass
            result = terminate_trees(
                roots,
                grace_s=self.grace_s,
                kill_verify_s=self.kill_verify_s,
                scope=Scope(self._session_id, owner=self._owner, own_descendants=True),
                incomplete=self._enumeration_gap(roots),
                cgroup=self._children.cgroup,
                wake_fd=self._escalate_r,
                escalated=self._escalated,
                adoptions=self._adoptions,
            )
        except Exception as err:
            log.exception("ending the child trees failed; SIGKILLing what we pinned")
            errors.append(f"ending children: {err!r}")
            result = _kill_pinned(roots, self.kill_verify_s)
        self._active_pins = list(result.pins)
        return roots, outcomes, result

    def _enumeration_gap(self, roots: list[Pin]) -> str | None:
        """Why the trees of ``roots`` cannot be enumerated completely; None when they can."""
        if not is_child_subreaper() and not self._children.all_in_cgroup():
            return (
                "this process is not a child subreaper (subreaper=False, or not Linux): an "
                "escapee that leaves its tree and clears its environment is re-parented "
                "elsewhere, out of sight"
            )
        gaps = self._children.enumeration_gaps()
        outside = [p.pid for p in roots if p.source == "recorded" and not descends_from_me(p.pid)]
        if outside:
            gaps.append(
                f"recorded children {outside[:10]} were started by an earlier owner: their "
                "orphans were not re-parented to this process"
            )
        return "; ".join(gaps) if gaps else None

    def _verification(
        self, result: TerminationResult | None, outcomes: list[ChildOutcome]
    ) -> dict[str, Any]:
        """The report's verification fields: verified only when complete and nothing left."""
        reason: str | None
        if result is None:
            verification, reason, tier = "unverified", "the children were not ended", ""
        else:
            verification = result.verification
            reason, tier = result.verification_reason, result.enumeration
        left = [o.pid for o in outcomes if o.outcome == "left"]
        if left and verification == "verified":
            verification = "unverified"
            reason = f"recorded children {left[:10]} could not be read and were left alone"
        if self._children.cgroup is None:
            tier += f" (cgroup tier not used: {self._children.cgroup_note})"
        return {
            "verified_no_orphans": verification == "verified",
            "verification": verification,
            "verification_reason": reason,
            "enumeration": tier,
        }

    def _record_roots(self, roots: list[Pin], errors: list[str]) -> list[ChildOutcome]:
        """Make sure every root's row says how it ended, then describe each."""
        if not self._children.wait_recorded(roots, _RECORD_WAIT_S):
            errors.append("exit watcher was slow; recorded the remaining ends directly")
        outcomes = []
        for pin in roots:
            if not self._children.is_recorded(pin):
                if pin.has_exited():
                    pin.collect(reap_adopted=False)
                try:
                    self._children.record(pin, row_state(pin))
                except Exception as err:
                    errors.append(f"recording child {pin.pid}: {err!r}")
            outcomes.append(_outcome_of(pin))
        return outcomes

    def _descendant_outcomes(self, result: TerminationResult | None) -> list[ChildOutcome]:
        if result is None:
            return []
        found = [p for p in result.pins if p.source == "descendant"]
        outcomes = [_outcome_of(p) for p in found]
        for pin in found:
            # Pinned during the enumeration, so ours to close (the registry closes the roots).
            # Left open, a pid hopper alone leaked thousands of pidfds per shutdown.
            pin.close()
        return outcomes

    def _record_status(self, errors: list[str]) -> SessionStatus | None:
        """Write the session's final status (PAUSED for a signal, else STOPPED), once it lands.

        Called by the sequence, and ahead of it by :meth:`_secure_final_state` when the
        sequence runs late; the second write of the same status changes nothing.
        """
        target = SessionStatus.PAUSED if self._signum is not None else SessionStatus.STOPPED
        status: SessionStatus | None = None
        try:
            current = self._store.get_session(self._session_id).status
        except SessionStoreError as err:
            errors.append(f"reading the session: {err!r}")
            current = None
        try:
            # current None: the session could not be read (the host closed the store early);
            # the write is still made, and is journaled for the next open.
            if current in (None, SessionStatus.ACTIVE, SessionStatus.PAUSED) and current != target:
                if target is SessionStatus.PAUSED:
                    self._store.pause_session(self._session_id)
                else:
                    self._store.stop_session(self._session_id)
                status = target
            else:
                status = current  # completed/crashed/stopped stay as they are
        except SessionStoreError as err:
            errors.append(f"setting the session {target.value}: {err!r}")
        else:
            self._status_recorded.set()  # applied, or in the journal for the next open
        return status

    def _final_state(
        self, outcomes: list[ChildOutcome], result: TerminationResult, errors: list[str]
    ) -> SessionStatus | None:
        """Session PAUSED (a signal: resumable) or STOPPED, then the final checkpoint."""
        status = self._record_status(errors)
        try:
            self._store.save_checkpoint(
                self._session_id,
                self.checkpoint_name,
                {
                    "cause": self._cause,
                    "reason": self._reason,
                    "children": [o.model_dump(mode="json") for o in outcomes],
                    "escalated_to_sigkill": result.escalated_to_sigkill,
                    **self._verification(result, outcomes),
                },
            )
        except SessionStoreError as err:
            errors.append(f"final checkpoint: {err!r}")
        return status

    def __repr__(self) -> str:
        return (
            f"<ProcessLayer session={self._session_id!r} state={self.state} "
            f"children={len(self._children.pins())} installed={self._relay.installed}>"
        )


def _kill_pinned(pins: list[Pin], verify_s: float) -> TerminationResult:
    """Last resort when tree termination itself failed: SIGKILL each pin and its group."""
    t = time.monotonic()
    for pin in pins:
        with contextlib.suppress(Exception):
            if not pin.send_group(signal.SIGKILL):
                pin.send(signal.SIGKILL)
            pin.note_signal(signal.SIGKILL)
    wait_exited(pins, t + verify_s)
    unkillable = [p for p in pins if not p.has_exited()]
    return TerminationResult(
        pins=list(pins),
        escalated_to_sigkill=True,
        unkillable=unkillable,
        durations={"kill": time.monotonic() - t},
        verification="orphans_left" if unkillable else "unverified",
        verification_reason="tree termination failed: only the pinned roots were killed",
        enumeration="pinned roots only",
    )


def _outcome_of(pin: Pin) -> ChildOutcome:
    return ChildOutcome(
        pid=pin.pid,
        start_ticks=pin.start_ticks,
        pgid=pin.pgid,
        argv=pin.argv,
        source=pin.source,
        outcome=pin.outcome(),
        exit_code=pin.exit_code,
    )
