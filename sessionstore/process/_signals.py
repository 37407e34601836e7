"""Signal handlers that only record and wake: the signal is handled on a listener thread.

Python runs signal handlers in the main thread, between bytecodes, so a main thread sitting in a
long C call (an SQLite query, a ``select``) delays them for as long as the call lasts. The C-level
handler, though, writes the signal number to the ``signal.set_wakeup_fd`` pipe at once. A
listener thread blocked on that pipe therefore sees the signal immediately and hands it to the
coordinator. The Python-level handler writes the same number, tagged, to the same pipe: that is
what keeps the layer hearing signals once something else owns the one wakeup fd (an asyncio loop
that ran ``add_signal_handler``). The listener counts both sources per signal and dispatches a
delivery once, whichever source reports it first. No SQL, no locks, no logging in a handler.

The handlers are plain ``signal.signal`` handlers even inside ``asyncio.run()``: a loop's
``add_signal_handler`` handlers are removed when the loop closes (the default action comes back,
and SIGTERM then kills the orchestrator with no shutdown), while ``signal.signal`` handlers outlive
the loop. Rejected: registering through the running loop (the loop's close drops them), and
forwarding our wakeup bytes to the loop's own wakeup socket (once the loop closes its fd number
can name an unrelated file).

One relay per process: :meth:`SignalRelay.install` of a second relay raises
:class:`~sessionstore.process.LayerAlreadyInstalledError`. Rejected: a process-wide dispatcher to
several layers, because the process can end by the signal only once, after every layer finished,
which couples the layers' deadlines; one installed layer that shuts the others down from a
callback says the same thing explicitly.

Rejected: ``sigwait`` on a thread with the signals blocked everywhere else (tini's way). Python
cannot block signals in threads it does not create, and blocked masks are inherited by every
``Popen`` child (§10.7 of the survey): children would ignore Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._errors import LayerAlreadyInstalledError

__all__ = ["CHECK_INTERVAL_S", "HANDLED_SIGNALS", "SignalRelay", "installed_relay"]

log = logging.getLogger("sessionstore.process")

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
)
# SIGINT and SIGHUP inherited as ignored stay ignored (``nohup``, background jobs of a
# non-interactive shell): that is the caller's explicit wish; Python itself does the same for
# SIGINT.
_RESPECT_IGNORED = (signal.SIGINT, signal.SIGHUP)
_STOP = 0  # not a signal number: tells the listener to exit
_FROM_HANDLER = 0x80  # tag of a byte written by the Python-level handler (signal numbers < 64)
CHECK_INTERVAL_S = 1.0
"""How often the listener checks that its handlers are still in place (and runs ``on_tick``)."""

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_installed_lock = threading.Lock()
_installed: SignalRelay | None = None


def installed_relay() -> SignalRelay | None:
    """The relay that holds this process's signal handlers, if any."""
    return _installed


class SignalRelay:
    """Installs handlers for :data:`HANDLED_SIGNALS` and calls ``on_signal(signum)`` on a thread.

    ``on_signal`` runs on the listener thread (or on a thread calling :meth:`drain`), never inside
    a handler, so it may take locks, log and start threads; it is called once per delivery.
    ``on_tick`` runs on the listener every :data:`CHECK_INTERVAL_S` seconds. After
    :meth:`passthrough` the main-thread handler forwards a signal to whatever handler was there
    before us (``KeyboardInterrupt`` for SIGINT, the default action, ...): used once shutdown is
    over but our handlers are still in place.
    """

    def __init__(
        self,
        on_signal: Callable[[int], None],
        *,
        owner: str = "",
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.owner = owner
        self._on_signal = on_signal
        self._on_tick = on_tick
        self._lock = threading.Lock()
        self._dispatch_lock = threading.RLock()
        self._previous: dict[int, _Handler] = {}
        self._own_wakeup = False
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None
        self._passthrough = False
        self._from_wakeup: dict[int, int] = {}
        self._from_handler: dict[int, int] = {}
        self._handler_fn = self._handler  # one bound method, to compare with getsignal()
        self.replaced: dict[int, str] = {}  # signal -> what took its handler after install
        self.installed = False

    @property
    def owns_wakeup_fd(self) -> bool:
        """True when the C-level wakeup fd is our pipe (signals heard even mid C call)."""
        return self._own_wakeup

    def install(self) -> None:
        """Install the handlers, the wakeup pipe and the listener thread. Idempotent.

        A wakeup fd set by someone else (a running asyncio loop) is left in place: the
        Python-level handlers then carry the signals, and the loop keeps its own.

        Raises:
            RuntimeError: called from a thread other than the main thread (Python only lets the
                main thread set signal handlers); nothing was changed.
            LayerAlreadyInstalledError: another relay of this process is installed; nothing was
                changed.
        """
        global _installed
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "ProcessLayer.install() must be called from the main thread: Python only lets "
                "the main thread set signal handlers (call layer.shutdown() from other threads)"
            )
        with _installed_lock, self._lock:
            if self.installed:
                return
            if _installed is not None:
                raise LayerAlreadyInstalledError(self.owner, _installed.owner)
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._write_fd, False)  # a full pipe must never block a handler
            os.set_blocking(self._read_fd, False)  # drain() must never block its caller
            try:
                self._install_handlers()
            except BaseException:
                self._restore_handlers()
                self._close_pipe()
                raise
            self._passthrough = False
            self._thread = threading.Thread(
                target=self._listen, name="sessionstore-signals", daemon=True
            )
            self._thread.start()
            self.installed = True
            _installed = self

    def _install_handlers(self) -> None:
        for sig in HANDLED_SIGNALS:
            previous = signal.getsignal(sig)
            if sig in _RESPECT_IGNORED and previous == signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handler_fn)
        old = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        if old == -1:
            self._own_wakeup = True
        else:
            # Someone (an asyncio loop's add_signal_handler) relies on the one wakeup fd: give it
            # back. A signal delivered during these two calls still runs our Python handler.
            signal.set_wakeup_fd(old)
            self._own_wakeup = False
            log.info(
                "a wakeup fd is already set (an asyncio loop?); signals reach the layer "
                "through its Python-level handlers"
            )

    def previous_handler(self, signum: int) -> Callable[[int, FrameType | None], Any] | None:
        """The Python callable that handled ``signum`` before install, if it is the app's own.

        Python's ``default_int_handler`` (which only raises KeyboardInterrupt) is not counted.
        """
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            return previous
        return None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread, between bytecodes: it must not take a lock the interrupted
        # code may hold, so it only writes to the pipe (the listener counts and dispatches).
        if self._passthrough:
            self._forward(signum, frame)
            return
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([signum | _FROM_HANDLER]))
        if not self._own_wakeup:
            return
        # An asyncio loop that took the wakeup fd resets it to -1 when it closes: take it back,
        # so a main thread blocked in C is heard again.
        with contextlib.suppress(ValueError, OSError):
            current = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
            if current not in (-1, self._write_fd):
                signal.set_wakeup_fd(current)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:  # SIG_DFL, or None (set from C, unknown to Python): take the default action
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def notify(self, signum: int) -> None:
        """Hand ``signum`` to the listener as one more delivery (safe from any thread)."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([signum]))

    def passthrough(self) -> None:
        """From now on, signals reaching our main-thread handler go to the previous handlers."""
        self._passthrough = True

    def drain(self) -> None:
        """Dispatch every signal already written to the pipe, now, on this thread.

        The coordinator calls this at its decision points, so a signal delivered before a
        decision is counted even when the listener thread has not been scheduled yet.
        """
        self._pump()

    def _pump(self) -> bool:
        """Read what is in the pipe and dispatch it; False once the listener should stop."""
        with self._dispatch_lock:
            fd = self._read_fd
            if fd == -1:
                return False
            try:
                data = os.read(fd, 256)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            fire: list[int] = []
            stop = False
            for byte in data:
                if byte == _STOP:
                    stop = True
                    continue
                signum = byte & ~_FROM_HANDLER
                mine, other = (
                    (self._from_handler, self._from_wakeup)
                    if byte & _FROM_HANDLER
                    else (self._from_wakeup, self._from_handler)
                )
                mine[signum] = mine.get(signum, 0) + 1
                # The other source may report the same delivery later (or already did): a
                # delivery counts when this source is ahead.
                if mine[signum] > other.get(signum, 0) and signum in self._previous:
                    fire.append(signum)
            for signum in fire:
                self._on_signal(signum)
            return not stop

    def _listen(self) -> None:
        while True:
            fd = self._read_fd
            if fd == -1:
                return
            try:
                ready, _, _ = select.select([fd], [], [], CHECK_INTERVAL_S)
            except (OSError, ValueError):
                return
            if ready and not self._pump():
                return
            self.check_handlers()
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception:
                    log.exception("signal listener tick failed")

    def check_handlers(self) -> dict[int, str]:
        """Warn (once per signal) about handlers of ours that were replaced after install.

        Returns:
            Every replaced signal so far, with what replaced it.
        """
        if not self.installed or self._passthrough:
            return dict(self.replaced)
        for sig in list(self._previous):
            current = signal.getsignal(sig)
            if current == self._handler_fn or sig in self.replaced:
                continue
            name = signal.Signals(sig).name
            module = getattr(current, "__module__", "") or ""
            if module.startswith("asyncio"):
                what = (
                    f"an asyncio loop's add_signal_handler({name}) replaced the ProcessLayer's "
                    f"handler: the layer no longer hears {name}, and when the loop closes "
                    f"{name} takes its default action with no shutdown; call "
                    "layer.shutdown() from your loop handler"
                )
            elif callable(current) and self._own_wakeup:
                what = (
                    f"a {name} handler set after ProcessLayer.install() runs in the main thread "
                    "while the layer's shutdown runs alongside it; install your handler before "
                    "install() to have it called once in the before_children phase"
                )
            else:
                what = (
                    f"the {name} handler was replaced after ProcessLayer.install() "
                    f"(now {current!r}): the layer no longer hears {name}"
                )
            self.replaced[sig] = what
            log.error("%s", what)
            warnings.warn(what, RuntimeWarning, stacklevel=1)
        return dict(self.replaced)

    def uninstall(self) -> None:
        """Restore the previous handlers and wakeup fd; stop the listener. Idempotent.

        Raises:
            RuntimeError: called from a thread other than the main thread; nothing changed.
        """
        global _installed
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("ProcessLayer.uninstall() must be called from the main thread")
        with _installed_lock, self._lock:
            if not self.installed:
                return
            self._restore_handlers()
            self.notify(_STOP)
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5.0)
            self._thread = None
            with self._dispatch_lock:
                self._close_pipe()
            self.installed = False
            if _installed is self:
                _installed = None

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous.items():
            # None means a handler set from C that Python cannot reinstall (rocketride#764):
            # the default action is the closest we can restore. A handler replaced after us
            # is the app's choice: left alone.
            if signal.getsignal(sig) == self._handler_fn:
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        if self._own_wakeup and self._write_fd != -1:
            with contextlib.suppress(ValueError, OSError):
                current = signal.set_wakeup_fd(-1)
                if current not in (-1, self._write_fd):
                    signal.set_wakeup_fd(current)  # someone else's now: leave it
        self._own_wakeup = False

    def _close_pipe(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd != -1:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1
