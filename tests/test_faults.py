"""Disk faults swept over every I/O call of a scenario: typed errors only, nothing acked lost.

SQLite tests itself by failing the N-th I/O call; these tests do the same through a VFS that
wraps the real one (``faultvfs``), below the library. For every N, every error kind and both a
one-shot and a lasting fault, each scenario checks:

1. only documented errors reached the caller: ``SessionStoreError`` subclasses or ``ValueError``;
2. once the fault is gone, a clean reopen succeeds and ``PRAGMA integrity_check`` is ok;
3. every write the caller saw acknowledged is in the database after that reopen (applied at
   once, or journaled and replayed);
4. an ``open()`` that failed left the database file and its journal byte-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faultvfs import Plan, faulty

from sessionstore import SessionStore, SessionStoreError, StoreConfig

# No timer thread: its I/O would make the count of calls differ from run to run.
CONFIG = StoreConfig(checkpointing=False, write_deadline_s=0.5, close_timeout_s=1.0)
TABLE = {"session": "sessions", "event": "events", "checkpoint": "checkpoints"}
COLUMN = {"session": "id", "event": "op_id", "checkpoint": "id"}


@dataclass
class Run:
    """What one scenario run saw: acknowledged writes and errors, by the call that raised."""

    acked: list[tuple[str, str]] = field(default_factory=list)
    raised: list[tuple[str, BaseException]] = field(default_factory=list)
    open_failed_on: bytes | None = None  # the files' digest before an open() that raised

    def call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            self.raised.append((name, err))
            return None


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    for p in (path, Path(f"{path}-ops.jsonl")):
        h.update(p.read_bytes() if p.exists() else b"<none>")
    return h.digest()


def _writes(run: Run, store: SessionStore, session_id: str, n: int) -> None:
    for i in range(n):
        event = run.call("log_event", store.log_event, session_id, f"m{i}", data={"i": i})
        if event is not None:
            run.acked.append(("event", event.op_id))


def fresh_file(path: Path, run: Run) -> None:
    """A new file: open, write, checkpoint, close, then write after the close."""
    store = run.call("open", SessionStore.open, path, config=CONFIG)
    if store is None:
        return
    session = run.call("create_session", store.create_session, "sweep")
    if session is not None:
        run.acked.append(("session", session.id))
        _writes(run, store, session.id, 3)
        cp = run.call("save_checkpoint", store.save_checkpoint, session.id, "cp", {"k": 1})
        if cp is not None:
            run.acked.append(("checkpoint", cp.id))
    run.call("checkpoint", store.checkpoint)
    run.call("close", store.close)
    if session is not None:
        _writes(run, store, session.id, 1)  # journaled after close


def _prepare_existing(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """A store with one session and three ops in its journal, made with no fault."""
    store = SessionStore.open(path, config=CONFIG)
    session = store.create_session("existing")
    store.close()
    acked = [("session", session.id)]
    for i in range(3):
        acked.append(("event", store.log_event(session.id, f"journaled {i}").op_id))
    return session.id, acked


def existing_file(path: Path, run: Run, session_id: str) -> None:
    """An existing file with a journal: open (replays it), write, close."""
    before = _digest(path)
    store = run.call("open", SessionStore.open, path, config=CONFIG)
    if store is None:
        run.open_failed_on = before
        return
    _writes(run, store, session_id, 2)
    run.call("close", store.close)


def _check(path: Path, run: Run) -> list[str]:
    """The invariants after a run; returns what broke (empty when all held)."""
    broken = [
        f"{name} raised {type(err).__name__}: {err}"
        for name, err in run.raised
        if not isinstance(err, SessionStoreError | ValueError)
    ]
    if run.open_failed_on is not None and _digest(path) != run.open_failed_on:
        broken.append("a failed open changed the file or its journal")
    with SessionStore.open(path, config=CONFIG) as store, store.lease() as lease:
        check = lease.execute("PRAGMA integrity_check")
        if check != [("ok",)]:
            broken.append(f"integrity_check: {check}")
        for kind, key in run.acked:
            sql = f"SELECT 1 FROM {TABLE[kind]} WHERE {COLUMN[kind]} = ?"
            if not lease.execute(sql, (key,)):
                broken.append(f"acknowledged {kind} {key} lost")
    return broken


def _count_calls(scenario: Callable[[Path, Run], None], path: Path) -> int:
    plan = Plan()
    with faulty(plan):
        scenario(path, Run())
    return plan.calls


PLANS = [
    pytest.param({"error": "ioerr"}, id="ioerr-once"),
    pytest.param({"error": "full"}, id="full-once"),
    pytest.param({"error": "full", "persistent": True}, id="full-lasting"),
    pytest.param({"error": "ioerr", "kinds": ("xWrite",), "torn": True}, id="torn-write"),
]


@pytest.mark.slow
@pytest.mark.parametrize("how", PLANS)
def test_sweep_fresh_file(tmp_path: Path, how: dict[str, Any]) -> None:
    """Every I/O call of open/write/checkpoint/close/journal on a new file, failed in turn."""
    total = _count_calls(fresh_file, tmp_path / "count.db")
    assert total > 50  # the sweep is over real I/O, not an empty scenario
    failures: dict[int, list[str]] = {}
    fired = 0
    for n in range(1, total + 1):
        path = tmp_path / f"n{n}.db"
        plan = Plan(fail_at=n, **how)
        run = Run()
        with faulty(plan):
            fresh_file(path, run)
        fired += plan.fired > 0
        broken = _check(path, run)
        if broken:
            failures[n] = broken
    assert fired > 0
    assert not failures, failures


@pytest.mark.slow
@pytest.mark.parametrize("how", PLANS)
def test_sweep_existing_file_with_journal(tmp_path: Path, how: dict[str, Any]) -> None:
    """Every I/O call of an open that replays a journal, then writes and a close, failed in turn."""
    probe = tmp_path / "count.db"
    sid, _ = _prepare_existing(probe)
    total = _count_calls(lambda p, r: existing_file(p, r, sid), probe)
    assert total > 20
    failures: dict[int, list[str]] = {}
    for n in range(1, total + 1):
        path = tmp_path / f"n{n}.db"
        session_id, acked = _prepare_existing(path)
        run = Run(acked=list(acked))
        with faulty(Plan(fail_at=n, **how)):
            existing_file(path, run, session_id)
        broken = _check(path, run)
        if broken:
            failures[n] = broken
    assert not failures, failures
