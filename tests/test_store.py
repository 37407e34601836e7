"""The store's API: round-trips of every call, validation at the boundary, errors with data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sessionstore import (
    ChildState,
    InvalidTransitionError,
    SessionNotFoundError,
    SessionStatus,
    SessionStore,
    StoreClosedError,
    StoreConfig,
    StoreState,
)


def test_session_round_trip(store: SessionStore) -> None:
    """create_session returns what get_session and list_sessions later read back."""
    created = store.create_session("build", objective="compile", metadata={"k": [1, 2]})
    got = store.get_session(created.id)
    assert got == created
    assert got.status is SessionStatus.ACTIVE
    assert got.owner is not None and got.owner.pid == os.getpid()
    assert got.owner_host
    assert store.list_sessions() == [got]
    assert store.list_sessions(status="paused") == []


def test_session_ids_sort_by_creation(store: SessionStore) -> None:
    """Session ids sort in creation order, so listing by id lists oldest first."""
    ids = [store.create_session(f"s{i}").id for i in range(50)]
    assert ids == sorted(ids)
    assert [s.id for s in store.list_sessions()] == ids


def test_status_transitions(store: SessionStore, session_id: str) -> None:
    """pause/resume/stop move the status and stamp the matching time; bad moves raise."""
    store.heartbeat(session_id)
    store.pause_session(session_id)
    paused = store.get_session(session_id)
    assert paused.status is SessionStatus.PAUSED and paused.paused_at is not None
    assert paused.heartbeat_at is not None
    store.resume_session(session_id)
    assert store.get_session(session_id).status is SessionStatus.ACTIVE
    store.stop_session(session_id)
    stopped = store.get_session(session_id)
    assert stopped.status is SessionStatus.STOPPED and stopped.stopped_at is not None
    with pytest.raises(InvalidTransitionError) as info:
        store.pause_session(session_id)
    assert info.value.current == "stopped"
    assert store.get_session(session_id).status is SessionStatus.STOPPED
    assert store.list_sessions(status=SessionStatus.STOPPED)[0].id == session_id


def test_checkpoints_latest_by_name_and_overall(store: SessionStore, session_id: str) -> None:
    """latest_checkpoint returns the newest overall or per name; list_checkpoints pages them."""
    assert store.latest_checkpoint(session_id) is None
    a1 = store.save_checkpoint(session_id, "a", {"v": 1})
    b1 = store.save_checkpoint(session_id, "b", [1, "two", None])
    a2 = store.save_checkpoint(session_id, "a", {"v": 2})
    assert store.latest_checkpoint(session_id) == a2
    assert store.latest_checkpoint(session_id, name="b") == b1
    assert store.latest_checkpoint(session_id, name="zzz") is None
    assert store.list_checkpoints(session_id) == [a1, b1, a2]
    assert store.list_checkpoints(session_id, name="a", newest_first=True) == [a2, a1]


def test_events_page_oldest_first(store: SessionStore, session_id: str) -> None:
    """events() pages with after_id and limit, oldest first, with level and JSON data kept."""
    logged = [
        store.log_event(session_id, f"m{i}", level="warning", data={"i": i}) for i in range(25)
    ]
    assert all(e.id is not None for e in logged)
    page1 = store.events(session_id, limit=10)
    page2 = store.events(session_id, after_id=page1[-1].id, limit=10)
    page3 = store.events(session_id, after_id=page2[-1].id, limit=10)
    assert [e.message for e in page1 + page2 + page3] == [f"m{i}" for i in range(25)]
    assert page1[0] == logged[0]
    assert page3[-1].data == {"i": 24} and page3[-1].level == "warning"
    with pytest.raises(ValueError):
        store.events(session_id, limit=0)


def test_children_recorded_with_identity(store: SessionStore, session_id: str) -> None:
    """add_child captures pid, start ticks, boot id, pgid and argv; remove_child is idempotent."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        child = store.add_child(session_id, proc.pid)
        assert child.pid == proc.pid and child.start_ticks > 0 and child.boot_id
        assert child.pgid == os.getpgid(proc.pid)
        assert child.argv[0] == sys.executable
        assert child.identity.is_alive()
        assert store.children(session_id) == [child]
    finally:
        proc.communicate(b"")
    store.remove_child(session_id, proc.pid, exit_code=proc.returncode)
    store.remove_child(session_id, proc.pid, exit_code=99)  # second call changes nothing
    assert store.children(session_id) == []
    [ended] = store.children(session_id, include_exited=True)
    assert ended.state is ChildState.EXITED and ended.exit_code == 0 and ended.exited_at
    assert [c.pid for c in store.all_children(include_exited=True)] == [proc.pid]


@pytest.mark.parametrize("pid", [0, 1, -5, True, "123", 1.5])
def test_add_child_rejects_bad_pids(store: SessionStore, session_id: str, pid: object) -> None:
    """A child pid must be an int > 1: anything else is a ValueError before the DB is touched."""
    with pytest.raises(ValueError):
        store.add_child(session_id, pid)  # type: ignore[arg-type]
    assert store.children(session_id, include_exited=True) == []


def test_add_child_rejects_own_pid_and_dead_pid(store: SessionStore, session_id: str) -> None:
    """Our own pid is refused; a pid with no process has no identity to capture."""
    with pytest.raises(ValueError, match="this process"):
        store.add_child(session_id, os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        store.add_child(session_id, proc.pid)


def test_unknown_session_raises_on_reads_and_writes(store: SessionStore) -> None:
    """Every call naming an unknown session raises SessionNotFoundError carrying the id."""
    calls = [
        lambda: store.get_session("nope"),
        lambda: store.heartbeat("nope"),
        lambda: store.pause_session("nope"),
        lambda: store.log_event("nope", "m"),
        lambda: store.save_checkpoint("nope", "c", {}),
        lambda: store.events("nope"),
        lambda: store.latest_checkpoint("nope"),
        lambda: store.children("nope"),
        lambda: store.remove_child("nope", 12345),
    ]
    for call in calls:
        with pytest.raises(SessionNotFoundError) as info:
            call()
        assert info.value.session_id == "nope"
    assert store.list_sessions() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s, sid: s.create_session(""),
        lambda s, sid: s.create_session("x" * 201),
        lambda s, sid: s.create_session("ok", metadata={"f": object()}),
        lambda s, sid: s.create_session("ok", metadata=[1]),
        lambda s, sid: s.log_event(sid, "m", level="loud"),
        lambda s, sid: s.log_event(sid, "m", data={"nan": float("nan")}),
        lambda s, sid: s.save_checkpoint(sid, "", {}),
        lambda s, sid: s.save_checkpoint(sid, "c", {1, 2}),
        lambda s, sid: s.set_status(sid, "exploded"),
    ],
)
def test_bad_input_is_value_error(store: SessionStore, session_id: str, call: object) -> None:
    """Bad input raises ValueError (pydantic's ValidationError is one) and writes nothing."""
    before = store.stats().applied
    with pytest.raises(ValueError):
        call(store, session_id)  # type: ignore[operator]
    assert store.stats().applied == before


def test_reads_after_close_raise_and_close_is_idempotent(db_path: str) -> None:
    """After close, reads raise StoreClosedError, writes return, and close() again is a no-op."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    first = store.close()
    assert store.closed and store.state is StoreState.CLOSED
    assert not first.already_closed and first.errors == []
    again = store.close()
    assert again.already_closed
    with pytest.raises(StoreClosedError) as info:
        store.get_session(sid)
    assert info.value.path == store.path
    event = store.log_event(sid, "late")
    assert event.id is None
    with SessionStore.open(db_path) as reopened:
        assert [e.message for e in reopened.events(sid)] == ["late"]


def test_repr_and_stats_show_state(store: SessionStore, session_id: str) -> None:
    """Repr shows path, state, leases and pending; stats counts applied ops and WAL bytes."""
    store.log_event(session_id, "m")
    text = repr(store)
    assert "state=OPEN" in text and "leases=0" in text and "pending=0" in text
    stats = store.stats()
    assert stats.state is StoreState.OPEN
    assert stats.applied == 2  # create_session + log_event
    assert stats.wal_bytes > 0 and stats.journal_bytes == 0


def test_context_manager_closes(db_path: str) -> None:
    """Leaving the with-block closes the store and removes the WAL (last connection)."""
    with SessionStore.open(db_path) as store:
        store.create_session("s")
    assert store.closed
    assert not os.path.exists(db_path + "-wal") or os.path.getsize(db_path + "-wal") == 0


def test_synchronous_full_selectable(db_path: str) -> None:
    """StoreConfig(synchronous='FULL') reaches every connection."""
    config = StoreConfig(synchronous="FULL")
    with SessionStore.open(db_path, config=config) as store, store.lease() as lease:
        assert lease.execute("PRAGMA synchronous") == [(2,)]
        assert lease.execute("PRAGMA journal_mode") == [("wal",)]
        assert lease.execute("PRAGMA foreign_keys") == [(1,)]


def test_config_rejects_nonsense() -> None:
    """StoreConfig validates at construction (negative timeouts, unknown modes, extra keys)."""
    for bad in (
        {"busy_timeout_ms": -1},
        {"synchronous": "OFF"},
        {"nonsense": 1},
        {"close_timeout_s": -2},
    ):
        with pytest.raises(ValueError):
            StoreConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_eight_processes_write_at_once_nothing_lost(db_path: str, tmp_path: object) -> None:
    """8 processes writing events, heartbeats and checkpoints together: no error, no loss."""
    import json

    from _procs import finish, release, start
    from _support import all_event_ids

    with SessionStore.open(db_path) as store:
        sid = store.create_session("shared").id
    acks = [f"{tmp_path}/ack{i}" for i in range(8)]
    procs = [start("write", db_path, sid, "150", ack) for ack in acks]
    release(procs)
    results = [json.loads(finish(p)) for p in procs]
    assert results == [{"failures": 0, "errors": []}] * 8
    acked = [line for ack in acks for line in Path(ack).read_text().split()]
    with SessionStore.open(db_path) as store:
        events = set(all_event_ids(store, sid))
        checkpoints = {c.id for c in store.list_checkpoints(sid)}
        assert store.get_session(sid).heartbeat_at is not None
    assert {a for a in acked if not a.startswith("cp:")} == events
    assert {a[3:] for a in acked if a.startswith("cp:")} == checkpoints
    assert len(events) == 8 * 150 and len(checkpoints) == 8 * 15


def test_lease_is_read_only(store: SessionStore, session_id: str) -> None:
    """Ad-hoc queries cannot write: every write must go through an op and BEGIN IMMEDIATE."""
    import apsw

    with store.lease() as lease, pytest.raises(apsw.ReadOnlyError):
        lease.execute("DELETE FROM sessions")
    assert store.get_session(session_id).id == session_id
