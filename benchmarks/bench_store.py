"""Single-process store costs as pytest-benchmark tests: a regression signal, not the ratio.

Run: ``python -m pytest benchmarks/bench_store.py --benchmark-enable``
(``--benchmark-disable`` is the default in pyproject so the suite can import these as tests).
The store-vs-raw ratio is measured by ``bench_ratio.py``: two tests timed one after the other
do not compare on a machine whose speed drifts (0.38-0.71 for the same pair, measured).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _raw
import apsw
import pytest

from sessionstore import SessionStore, StoreConfig


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore.open(tmp_path / "bench.db")
    yield s
    s.close()


@pytest.fixture
def raw(store: SessionStore) -> Iterator[tuple[apsw.Connection, str]]:
    """A raw apsw connection on the same file, set up as the store sets up its writer."""
    sid = store.create_session("raw").id
    conn = _raw.connect(store.path)
    yield conn, sid
    conn.close()


@pytest.mark.benchmark(group="log_event")
def test_log_event_sessionstore(benchmark, store: SessionStore) -> None:  # type: ignore[no-untyped-def]
    sid = store.create_session("bench").id
    benchmark(store.log_event, sid, "step finished", data={"step": 1})


@pytest.mark.benchmark(group="log_event")
def test_log_event_raw_apsw(benchmark, raw: tuple[apsw.Connection, str]) -> None:  # type: ignore[no-untyped-def]
    conn, sid = raw
    benchmark(_raw.log_event, conn, sid, 1)


@pytest.mark.benchmark(group="heartbeat")
def test_heartbeat_sessionstore(benchmark, store: SessionStore) -> None:  # type: ignore[no-untyped-def]
    sid = store.create_session("bench").id
    benchmark(store.heartbeat, sid)


@pytest.mark.benchmark(group="heartbeat")
def test_heartbeat_raw_apsw(benchmark, raw: tuple[apsw.Connection, str]) -> None:  # type: ignore[no-untyped-def]
    conn, sid = raw
    benchmark(_raw.heartbeat, conn, sid, 1)


@pytest.mark.benchmark(group="open")
def test_open_existing(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "existing.db"
    with SessionStore.open(path) as s:
        for i in range(100):
            s.create_session(f"s{i}")
    keeper = SessionStore.open(path)  # another user keeps the WAL alive, as in real use

    def open_store() -> SessionStore:
        return SessionStore.open(path, config=StoreConfig(checkpointing=False))

    opened: list[SessionStore] = []
    benchmark.pedantic(lambda: opened.append(open_store()), rounds=200, iterations=1)
    for s in opened:
        s.close()
    keeper.close()


def _close_with_queue(path: Path, queued: int) -> float:
    """Open, queue ``queued`` writes while close drains a held lease, return close's seconds."""
    store = SessionStore.open(path)
    sid = store.create_session("close").id
    hold = threading.Event()
    holding = threading.Event()

    def holder() -> None:
        with store.lease("bench"):
            holding.set()
            hold.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    holding.wait(30)
    result: list[float] = []

    def closer() -> None:
        t0 = time.perf_counter()
        store.close(timeout=30)
        result.append(time.perf_counter() - t0)

    c = threading.Thread(target=closer)
    c.start()
    while store.state.value == "open":
        pass
    for i in range(queued):
        store.log_event(sid, f"q{i}")
    # Measure close from here: release the lease, so the drain and the queue apply happen now.
    t0 = time.perf_counter()
    hold.set()
    c.join(60)
    t.join(60)
    return time.perf_counter() - t0


@pytest.mark.benchmark(group="close")
@pytest.mark.parametrize("queued", [0, 1000])
def test_close_latency(benchmark, tmp_path: Path, queued: int) -> None:  # type: ignore[no-untyped-def]
    counter = iter(range(10_000))
    benchmark.pedantic(
        lambda: _close_with_queue(tmp_path / f"c{next(counter)}.db", queued),
        rounds=10,
        iterations=1,
    )
