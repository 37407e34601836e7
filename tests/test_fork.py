"""Fork under threads: the child never uses the parent's SQLite handles or locks, never hangs."""

from __future__ import annotations

import os
import threading

import pytest
from _support import wait_forked_child

from sessionstore import SessionStore, UnsafeForkError
from sessionstore._forkgate import FORK_GATE

_CHILD_TIMEOUT_MS = 10_000


def _child(store: SessionStore, db: str, sid: str) -> None:
    """In the forked child: use the inherited store and a new one, then leave without cleanup."""
    code = 0
    try:
        store.stats()
        if store.get_session(sid).id != sid:  # a read on the child's own new connection
            code = 3
        with SessionStore.open(db) as fresh:
            if fresh.get_session(sid).id != sid:
                code = 4
    except BaseException:  # the child reports any failure through its exit code
        code = 5
    os._exit(code)


@pytest.mark.slow
# Python 3.12+ warns at every fork of a threaded process; forking under threads is the point.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_under_writing_and_reading_threads_never_hangs(db_path: str) -> None:
    """200 forks while threads write, read and checkpoint: every child finishes, none hangs."""
    store = SessionStore.open(db_path)
    sid = store.create_session("forks").id
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            store.log_event(sid, "from a thread", data={"pad": "x" * 200})

    def read() -> None:
        while not stop.is_set():
            store.events(sid, limit=20)

    threads = [threading.Thread(target=f) for f in (write, write, read, read)]
    for thread in threads:
        thread.start()
    outcomes: list[int | None] = []
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                _child(store, db_path, sid)
            outcomes.append(wait_forked_child(pid, _CHILD_TIMEOUT_MS))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    hung = outcomes.count(None)
    failed = [code for code in outcomes if code]
    assert hung == 0 and not failed, f"{hung} hung, failed with {failed} of {len(outcomes)}"
    store.log_event(sid, "parent after the forks")  # the parent's handles still work
    store.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_past_the_wait_gives_the_child_a_clear_error_not_a_hang(db_path: str) -> None:
    """A thread holds a section past the fork's wait: the child's SQLite use raises, never hangs.

    The thread stays inside its section (as a thread stuck in SQLite would) until the fork is
    done, so the fork's wait (lowered to 0.2 s here) runs out; the child must then refuse SQLite
    with UnsafeForkError, and the parent's store keeps working once the thread leaves.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("stuck").id
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with FORK_GATE.section():
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    saved = FORK_GATE.wait_s
    try:
        assert inside.wait(30)
        FORK_GATE.wait_s = 0.2
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                SessionStore.open(db_path).close()
            except UnsafeForkError:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
    finally:
        FORK_GATE.wait_s = saved
        leave.set()
        holder.join(30)
    assert wait_forked_child(pid, _CHILD_TIMEOUT_MS) == 0
    assert store.get_session(sid).id == sid
    store.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_thread_that_forks_is_the_childs_main_thread_for_writes(db_path: str) -> None:
    """Fork from a non-main thread: it is the child's main thread, where signals land.

    So its writes there take the writer's lock as the main thread does; the parent's record
    is unchanged.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("forked").id
    parent_main = FORK_GATE.main_ident
    forked: list[int] = []

    def fork_here() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if FORK_GATE.main_ident == threading.get_ident() == (threading.main_thread().ident):
                    code = 2
                    store.heartbeat(sid)  # the inherited store, on a connection of its own
                    code = 0
            except BaseException:  # the child reports any failure through its exit code
                code = 3
            os._exit(code)
        forked.append(pid)

    thread = threading.Thread(target=fork_here)
    thread.start()
    thread.join(30)
    assert wait_forked_child(forked[0], _CHILD_TIMEOUT_MS) == 0
    assert FORK_GATE.main_ident == parent_main == threading.main_thread().ident
    assert store.get_session(sid).heartbeat_at is not None
    store.close()
