"""sessionstore.testing: the fake clock drives the store's deadlines, leaks fail, pid waits end."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from sessionstore import SessionStore, StoreConfig, StoreState
from sessionstore.testing import (
    FakeClock,
    StoreLeftOpenError,
    no_store_left_open,
    open_stores,
    wait_pids_exited,
)


def test_fake_clock_moves_only_when_told() -> None:
    """Readings stay put until advance()/sleep(); step moves every reading; time never goes back."""
    clock = FakeClock(5.0)
    assert clock() == clock() == 5.0
    clock.advance(2.5)
    clock.sleep(0.5)
    assert clock() == 8.0 and clock.sleeps == [0.5] and clock.readings == 3
    stepping = FakeClock(step=10.0)
    assert [stepping(), stepping(), stepping()] == [0.0, 10.0, 20.0]
    assert stepping.now == 30.0
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="step"):
        FakeClock(step=-1)


def test_fake_clock_runs_out_the_write_deadline_of_a_locked_store(db_path: str) -> None:
    """A write facing a lock held elsewhere gives up by the fake clock, not after 1000 real s."""
    config = StoreConfig(busy_timeout_ms=1, write_deadline_s=1000, checkpointing=False)
    clock = FakeClock(step=600.0)  # every reading is 10 minutes later
    store = SessionStore.open(db_path, config=config, clock=clock)
    sid = store.create_session("s").id
    other = apsw.Connection(db_path)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        event = store.log_event(sid, "held back")
        stats = store.stats()
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()
    assert event.id is None and stats.journaled == 1  # journaled at the deadline, not lost
    waited = re.search(r"after ([0-9.]+) s", stats.failures[-1].reason)
    assert waited is not None and float(waited.group(1)) >= 1000  # fake time, not real
    with SessionStore.open(db_path) as reopened:
        assert [e.message for e in reopened.events(sid)] == ["held back"]


def test_a_store_left_open_fails_the_block_and_is_closed(db_path: str) -> None:
    """no_store_left_open raises naming the leaked store's path, after closing it."""
    with pytest.raises(StoreLeftOpenError) as caught, no_store_left_open():
        leaked = SessionStore.open(db_path)
    assert caught.value.paths == [leaked.path]
    assert leaked.state is StoreState.CLOSED and leaked not in open_stores()


def test_closed_and_earlier_stores_pass(tmp_path: Path) -> None:
    """Stores closed in the block, and stores opened before it, are not leaks."""
    earlier = SessionStore.open(str(tmp_path / "earlier.db"))
    try:
        with no_store_left_open(), SessionStore.open(str(tmp_path / "inner.db")):
            assert earlier in open_stores()
        assert earlier.state is StoreState.OPEN
    finally:
        earlier.close()


def test_as_a_decorator_an_error_in_the_test_wins(db_path: str) -> None:
    """Decorating a function checks each call; the function's own error propagates unchanged."""

    @no_store_left_open()
    def broken() -> None:
        SessionStore.open(db_path)
        raise KeyError("the test's own failure")

    with pytest.raises(KeyError, match="own failure"):
        broken()
    assert open_stores() == []


def _children(n: int) -> list[subprocess.Popen[bytes]]:
    # Each child runs until its stdin closes: the test decides when each one exits.
    code = "import sys; sys.stdin.buffer.read()"
    return [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE) for _ in range(n)]


def test_wait_pids_exited_returns_when_the_last_exits() -> None:
    """Running children are reported alive at the timeout; ended ones (zombies too) are not."""
    procs = _children(20)
    try:
        pids = [p.pid for p in procs]
        assert wait_pids_exited(pids, 0) == set(pids)
        order = procs[:]
        random.shuffle(order)
        for p in order[:10]:
            assert p.stdin is not None
            p.stdin.close()
        assert wait_pids_exited([p.pid for p in order[:10]], 60) == set()  # unreaped: exited
        assert wait_pids_exited(pids, 0) == {p.pid for p in order[10:]}
        for p in order[10:]:
            assert p.stdin is not None
            p.stdin.close()
        assert wait_pids_exited(pids, 60) == set()
    finally:
        for p in procs:
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()
            p.wait(timeout=60)
    assert wait_pids_exited(pids, 0) == set()  # reaped: no such process is exited too


def test_import_sessionstore_does_not_import_testing() -> None:
    """The testing helpers (and psutil with them) load only when a test imports them."""
    code = "import sys, sessionstore; print('sessionstore.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
