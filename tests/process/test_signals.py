"""SignalRelay and ProcessLayer.install(): main thread only, idempotent, previous handlers back."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import warnings
from types import FrameType

import pytest

from sessionstore import SessionStore
from sessionstore.process import LayerAlreadyInstalledError, ProcessLayer
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


def _collecting() -> tuple[list[int], SignalRelay]:
    seen: list[int] = []
    return seen, SignalRelay(seen.append)


def test_each_delivery_is_dispatched_once() -> None:
    """Wakeup fd and Python handler both report a signal; the coordinator hears it once."""
    seen, relay = _collecting()
    relay.install()
    try:
        assert relay.owns_wakeup_fd
        for _ in range(3):
            signal.raise_signal(signal.SIGHUP)  # the Python handler has run when this returns
        relay.drain()  # what the listener has not dispatched yet, dispatched here
        assert seen == [signal.SIGHUP] * 3
    finally:
        relay.uninstall()


def test_signals_heard_when_someone_else_takes_the_wakeup_fd() -> None:
    """An asyncio loop that takes the wakeup fd after install() does not deafen the layer."""
    seen, relay = _collecting()
    relay.install()
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        ours = signal.set_wakeup_fd(w)  # what loop.add_signal_handler() does
        signal.raise_signal(signal.SIGHUP)
        relay.drain()
        assert seen == [signal.SIGHUP]
        assert signal.set_wakeup_fd(ours) == w
    finally:
        relay.uninstall()
        os.close(r)
        os.close(w)


def test_handlers_outlive_asyncio_run() -> None:
    """Installed inside asyncio.run(), the handlers stay after the loop closes, and still work."""
    seen, relay = _collecting()

    async def main() -> None:
        relay.install()

    try:
        asyncio.run(main())
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
        signal.raise_signal(signal.SIGHUP)
        relay.drain()
        assert seen == [signal.SIGHUP]
    finally:
        relay.uninstall()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_loop_add_signal_handler_after_install_is_warned() -> None:
    """An app's loop.add_signal_handler() for a signal the layer owns is reported loudly."""
    _, relay = _collecting()

    async def main() -> dict[int, str]:
        relay.install()
        loop = asyncio.get_running_loop()
        # The listener may notice first, on its own thread: record warnings from any thread.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.add_signal_handler(signal.SIGHUP, lambda: None)
            replaced = relay.check_handlers()
        loop.remove_signal_handler(signal.SIGHUP)
        assert [w for w in caught if "add_signal_handler(SIGHUP)" in str(w.message)]
        return replaced

    try:
        replaced = asyncio.run(main())
        assert set(replaced) == {signal.SIGHUP}
        assert "no longer hears SIGHUP" in replaced[signal.SIGHUP]
    finally:
        relay.uninstall()


def test_handler_set_after_install_is_warned() -> None:
    """A plain handler set after install() is detected once; the relay still hears the signal."""
    seen, relay = _collecting()
    relay.install()
    with warnings.catch_warnings(record=True) as caught:  # the listener may warn first
        warnings.simplefilter("always")
        old = signal.signal(signal.SIGHUP, _previous)
        relay.check_handlers()
        relay.check_handlers()
    try:
        assert [str(w.message) for w in caught if "set after" in str(w.message)] == [
            relay.replaced[signal.SIGHUP]
        ]  # warned once, remembered
        signal.raise_signal(signal.SIGHUP)
        relay.drain()
        assert seen == [signal.SIGHUP]  # the C handler still writes to our wakeup fd
    finally:
        signal.signal(signal.SIGHUP, old)
        relay.uninstall()


def test_second_relay_is_refused_until_the_first_uninstalls() -> None:
    """Two relays in one process: the second install() raises and changes nothing."""
    first = SignalRelay(lambda signum: None, owner="a")
    second = SignalRelay(lambda signum: None, owner="b")
    first.install()
    try:
        ours = signal.getsignal(signal.SIGTERM)
        with pytest.raises(LayerAlreadyInstalledError) as info:
            second.install()
        assert info.value.installed_session_id == "a" and info.value.session_id == "b"
        assert signal.getsignal(signal.SIGTERM) is ours and not second.installed
    finally:
        first.uninstall()
    second.install()
    second.uninstall()


def test_second_layer_install_is_refused(store: SessionStore, session_id: str) -> None:
    """Two ProcessLayers: the second install() says which layer holds the signals."""
    other = store.create_session("other").id
    first = ProcessLayer(store, session_id, subreaper=False).install()
    second = ProcessLayer(store, other, subreaper=False)
    try:
        with pytest.raises(LayerAlreadyInstalledError, match=session_id):
            second.install()
    finally:
        first.uninstall()
        second.shutdown()
        first.shutdown()


def test_previous_app_handler_is_offered_for_chaining() -> None:
    """A handler found at install() is kept for chaining; Python's default SIGINT one is not."""
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_hup = signal.signal(signal.SIGHUP, _previous)
    _, relay = _collecting()
    relay.install()
    try:
        assert relay.previous_handler(signal.SIGHUP) is _previous
        assert relay.previous_handler(signal.SIGINT) is None
        assert relay.previous_handler(signal.SIGTERM) is None
    finally:
        relay.uninstall()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGHUP, old_hup)
