"""Signal handlers that only record and wake: the signal is handled on a listener thread.

Python runs signal handlers in the main thread, between bytecodes, so a main thread sitting in a
long C call (an SQLite query, a ``select``) delays them for as long as the call lasts. The C-level
handler, though, writes the signal number to the ``signal.set_wakeup_fd`` pipe at once. A
listener thread blocked on that pipe therefore sees the signal immediately and hands it to the
coordinator; the Python-level handler itself does nothing (it must exist: without one, no byte
is written). No SQL, no logging, no exceptions inside a handler.

With an asyncio loop running in the main thread, the loop owns the one wakeup fd; we register
through ``loop.add_signal_handler`` instead, whose callback writes the same byte to our pipe.

Rejected: ``sigwait`` on a thread with the signals blocked everywhere else (tini's way). Python
cannot block signals in threads it does not create, and blocked masks are inherited by every
``Popen`` child (§10.7 of the survey): children would ignore Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["HANDLED_SIGNALS", "SignalRelay"]

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

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SignalRelay:
    """Installs handlers for :data:`HANDLED_SIGNALS` and calls ``on_signal(signum)`` on a thread.

    ``on_signal`` runs on the listener thread, never inside a handler, so it may take locks,
    log and start threads. After :meth:`passthrough` the main-thread handler forwards a signal
    to whatever handler was there before us (``KeyboardInterrupt`` for SIGINT, the default
    action, ...): used once shutdown is over but our handlers are still in place.
    """

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self._on_signal = on_signal
        self._lock = threading.Lock()
        self._previous: dict[int, _Handler] = {}
        self._previous_wakeup_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_fd = -1
        self._write_fd = -1
        self._thread: threading.Thread | None = None
        self._passthrough = False
        self.installed = False

    @property
    def uses_asyncio(self) -> bool:
        """True when the handlers were installed through a running asyncio loop."""
        return self._loop is not None

    def install(self) -> None:
        """Install the handlers, the wakeup pipe and the listener thread. Idempotent.

        Raises:
            RuntimeError: called from a thread other than the main thread (Python only lets the
                main thread set signal handlers); nothing was changed.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "ProcessLayer.install() must be called from the main thread: Python only lets "
                "the main thread set signal handlers (call layer.shutdown() from other threads)"
            )
        with self._lock:
            if self.installed:
                return
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._write_fd, False)  # a full pipe must never block a handler
            self._loop = _running_loop()
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

    def _install_handlers(self) -> None:
        for sig in HANDLED_SIGNALS:
            previous = signal.getsignal(sig)
            if sig in _RESPECT_IGNORED and previous == signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            if self._loop is not None:
                self._loop.add_signal_handler(sig, self._loop_handler, int(sig))
            else:
                signal.signal(sig, self._handler)
        if self._loop is None:
            self._previous_wakeup_fd = signal.set_wakeup_fd(
                self._write_fd, warn_on_full_buffer=False
            )

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread. The wakeup fd has already carried the signal to the
        # listener; nothing else happens here until shutdown is over.
        if self._passthrough:
            self._forward(signum, frame)

    def _loop_handler(self, signum: int) -> None:
        # Runs as an ordinary callback of the asyncio loop, in the main thread.
        if self._passthrough:
            self._forward(signum, None)
        else:
            self.notify(signum)

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
        """Hand ``signum`` to the listener, as a handler would (safe from any thread)."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([signum]))

    def passthrough(self) -> None:
        """From now on, signals reaching our main-thread handler go to the previous handlers."""
        self._passthrough = True

    def _listen(self) -> None:
        fd = self._read_fd
        while True:
            try:
                data = os.read(fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == _STOP:
                    return
                if signum in self._previous:
                    self._on_signal(signum)

    def uninstall(self) -> None:
        """Restore the previous handlers and wakeup fd; stop the listener. Idempotent.

        Raises:
            RuntimeError: called from a thread other than the main thread; nothing changed.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("ProcessLayer.uninstall() must be called from the main thread")
        with self._lock:
            if not self.installed:
                return
            self._restore_handlers()
            self.notify(_STOP)
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5.0)
            self._thread = None
            self._close_pipe()
            self.installed = False

    def _restore_handlers(self) -> None:
        for sig, previous in self._previous.items():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_signal_handler(sig)
            # None means a handler set from C that Python cannot reinstall (rocketride#764):
            # the default action is the closest we can restore.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        if self._loop is None and self._write_fd != -1:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._previous_wakeup_fd)
        self._previous_wakeup_fd = -1
        self._loop = None

    def _close_pipe(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd != -1:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
