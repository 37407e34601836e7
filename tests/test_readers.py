"""The read pool: connections opened lazily, never more than its size, shared in turn."""

from __future__ import annotations

import threading

import apsw
import pytest

from sessionstore._readers import ReaderPool


def test_pool_opens_lazily_and_reuses(db_path: str) -> None:
    """No connection until the first read; the same one serves the next read."""
    opened: list[apsw.Connection] = []

    def open_conn() -> apsw.Connection:
        opened.append(apsw.Connection(db_path))
        return opened[-1]

    pool = ReaderPool(open_conn, size=2)
    assert opened == []
    with pool.connection() as first:
        pass
    with pool.connection() as second:
        assert second is first
    assert len(opened) == 1
    for conn in pool.take_all():
        conn.close()


def test_pool_never_exceeds_its_size(db_path: str) -> None:
    """With the only connection out, a second reader waits until it comes back."""
    pool = ReaderPool(lambda: apsw.Connection(db_path), size=1)
    got_second = threading.Event()
    with pool.connection() as first:

        def second_reader() -> None:
            with pool.connection() as conn:
                assert conn is first
                got_second.set()

        thread = threading.Thread(target=second_reader)
        thread.start()
        assert not got_second.wait(0.2)  # still out: the second reader must be waiting
    thread.join(30)
    assert got_second.is_set()
    assert len(pool.all()) == 1
    for conn in pool.take_all():
        conn.close()


def test_failed_open_frees_the_slot(db_path: str) -> None:
    """An open that raises does not use up the pool: the next read opens again."""
    attempts = 0

    def flaky_open() -> apsw.Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise apsw.CantOpenError("first open fails")
        return apsw.Connection(db_path)

    pool = ReaderPool(flaky_open, size=1)
    with pytest.raises(apsw.CantOpenError), pool.connection():
        pass
    with pool.connection() as conn:
        assert conn is not None
    assert attempts == 2
    for c in pool.take_all():
        c.close()
