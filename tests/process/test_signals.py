"""SignalRelay and ProcessLayer.install(): main thread only, idempotent, previous handlers back."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from types import FrameType

import pytest

from sessionstore import SessionStore
from sessionstore.process import ProcessLayer
from sessionstore.process._signals import HANDLED_SIGNALS, SignalRelay


def _previous(signum: int, frame: FrameType | None) -> None:
    """A stand-in for a host application's own handler."""


def test_install_is_idempotent_and_uninstall_restores(store: SessionStore, session_id: str) -> None:
    """install() twice is one install; uninstall() brings back handlers and the wakeup fd."""
    before = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    old_term = signal.signal(signal.SIGTERM, _previous)
    try:
        layer = ProcessLayer(store, session_id, subreaper=False)
        layer.install()
        ours = signal.getsignal(signal.SIGTERM)
        assert ours is not _previous and callable(ours)
        layer.install()
        assert signal.getsignal(signal.SIGTERM) is ours
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup)
        assert wakeup != -1  # the relay's pipe
        layer.uninstall()
        layer.uninstall()
        assert signal.getsignal(signal.SIGTERM) is _previous
        assert signal.set_wakeup_fd(-1) == -1
        layer.shutdown()
    finally:
        signal.signal(signal.SIGTERM, old_term)
    after = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    assert after == before


def test_install_off_the_main_thread_is_refused(store: SessionStore, session_id: str) -> None:
    """install() from a worker thread raises RuntimeError and installs nothing."""
    layer = ProcessLayer(store, session_id, subreaper=False)
    before = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            layer.install()
        except RuntimeError as err:
            errors.append(err)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert signal.getsignal(signal.SIGTERM) is before
    layer.shutdown()


def test_inherited_ignored_sigint_stays_ignored() -> None:
    """A SIGINT ignored by the parent (nohup, background job) is not taken over."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = SignalRelay(lambda signum: None)
    try:
        relay.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        relay.uninstall()
        signal.signal(signal.SIGINT, old)


@pytest.mark.slow
def test_signal_reaches_listener_not_handler() -> None:
    """A real signal is delivered to the listener thread's callback; the handler does nothing."""
    seen: list[int] = []
    got = threading.Event()

    def on_signal(signum: int) -> None:
        seen.append(signum)
        got.set()

    relay = SignalRelay(on_signal)
    relay.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert got.wait(10)
        assert seen == [signal.SIGHUP]
    finally:
        relay.uninstall()


@pytest.mark.slow
def test_passthrough_forwards_to_the_previous_handler() -> None:
    """After shutdown, a signal goes to the handler that was there before (here: a callable)."""
    calls: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
    relay = SignalRelay(lambda signum: None)
    relay.install()
    try:
        relay.passthrough()
        signal.raise_signal(signal.SIGHUP)  # the handler runs in this (main) thread
        assert calls == [signal.SIGHUP]
    finally:
        relay.uninstall()
        signal.signal(signal.SIGHUP, old)


def test_uninstall_off_the_main_thread_is_refused() -> None:
    """uninstall() from a worker thread raises RuntimeError and leaves the handlers alone."""
    relay = SignalRelay(lambda signum: None)
    relay.install()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            relay.uninstall()
        except RuntimeError as err:
            errors.append(err)

    try:
        t = threading.Thread(target=run)
        t.start()
        t.join(10)
        assert len(errors) == 1 and relay.installed
    finally:
        relay.uninstall()


@pytest.mark.slow
def test_asyncio_loop_handlers_go_through_the_loop() -> None:
    """With a running loop, handlers are registered on it and signals still reach the listener."""
    got = threading.Event()
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        seen.append(signum)
        got.set()

    async def main() -> bool:
        relay = SignalRelay(on_signal)
        relay.install()
        try:
            assert relay.uses_asyncio
            os.kill(os.getpid(), signal.SIGHUP)
            return await asyncio.get_running_loop().run_in_executor(None, got.wait, 10)
        finally:
            relay.uninstall()

    assert asyncio.run(main())
    assert seen == [signal.SIGHUP]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
