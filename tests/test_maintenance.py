"""Prune, vacuum and backup: real files, real writer processes, planted symlinks, a held lock."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import apsw
import pytest
from _procs import finish, release, start

from sessionstore import SessionStore, StoreConfig
from sessionstore._maintenance import oldest_journaled_ts, prune_sessions
from sessionstore._ops import (
    AddChild,
    CreateSession,
    DeleteSession,
    Heartbeat,
    LogEvent,
    PutCheckpoint,
    PutWrites,
    RemoveChild,
    SetOwner,
    SetStatus,
    new_id,
)
from sessionstore.errors import (
    InvalidTransitionError,
    SessionNotFoundError,
    StoreBusyError,
    StoreReadOnlyError,
)

pytestmark = pytest.mark.timeout(120)


def _old_session(store: SessionStore, at: float, *, status: str = "stopped") -> str:
    """A session created, written and ended at ``at`` (epoch s), with one of every record."""
    sid = new_id()
    ops = [
        CreateSession(ts=at, session_id=sid, name="old"),
        LogEvent(ts=at + 1, session_id=sid, level="info", message="m"),
        PutCheckpoint(ts=at + 1, session_id=sid, checkpoint_id="c1", data={"a": 1}),
        PutWrites(
            ts=at + 1,
            session_id=sid,
            checkpoint_id="c1",
            task_id="t",
            writes=[{"idx": 0, "channel": "ch", "type": None, "blob": None}],
        ),
        AddChild(ts=at + 1, session_id=sid, pid=4242, start_ticks=1, boot_id="b", argv=["x"]),
        RemoveChild(ts=at + 1.5, session_id=sid, pid=4242, start_ticks=1, exit_code=0),
    ]
    if status != "active":
        ops.append(SetStatus(ts=at + 2, session_id=sid, status=status))
    assert store.apply_ops(ops) == [None] * len(ops)
    return sid


def _rows(db: str, sid: str) -> dict[str, int]:
    conn = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t} WHERE {c} = ?", (sid,)).fetchall()[0][0])
            for t, c in (
                ("sessions", "id"),
                ("events", "session_id"),
                ("checkpoints", "session_id"),
                ("checkpoint_writes", "session_id"),
                ("child_processes", "session_id"),
            )
        }
    finally:
        conn.close()


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_prune_deletes_ended_sessions_and_keeps_anything_touched_after_the_cutoff(
    store: SessionStore,
) -> None:
    """Only sessions whose every record predates the cutoff go, with all their rows."""
    now = time.time()
    old, cutoff = now - 1000, now - 100
    gone = [_old_session(store, old, status=s) for s in ("stopped", "completed", "crashed")]
    kept = {
        "paused": _old_session(store, old, status="paused"),
        "active": _old_session(store, old, status="active"),
        "new event": _old_session(store, old),
        "new checkpoint": _old_session(store, old),
        "new heartbeat": _old_session(store, old),
        "status after cutoff": _old_session(store, old),
        "running child": _old_session(store, old),
    }
    errors = store.apply_ops(
        [
            LogEvent(ts=now, session_id=kept["new event"], level="info", message="late"),
            PutCheckpoint(ts=now, session_id=kept["new checkpoint"], checkpoint_id="c2"),
            Heartbeat(ts=now, session_id=kept["new heartbeat"]),
            SetStatus(ts=now, session_id=kept["status after cutoff"], status="stopped"),
            AddChild(
                ts=old + 3,
                session_id=kept["running child"],
                pid=4343,
                start_ticks=1,
                boot_id="b",
            ),
        ]
    )
    assert errors == [None] * 5
    # "running child"'s first child ended; the second is still running.
    report = store.prune_sessions(cutoff)
    assert (report.sessions, report.complete, report.journaled) == (3, True, False)
    for sid in gone:
        assert _rows(store.path, sid) == dict.fromkeys(_rows(store.path, sid), 0)
    for why, sid in kept.items():
        assert _rows(store.path, sid)["sessions"] == 1, why
        assert _rows(store.path, sid)["events"] >= 1, why
    assert store.prune_sessions(cutoff).sessions == 0  # idempotent


def test_prune_works_in_batches_until_none_is_left(store: SessionStore) -> None:
    """More sessions than one op's limit: every one goes, several ops each holding the lock."""
    old = time.time() - 1000
    for _ in range(25):
        _old_session(store, old)
    report = prune_sessions(store, old + 100, batch=10)
    assert (report.sessions, report.complete) == (25, True)
    assert store.list_sessions() == []


def test_a_pruned_session_is_not_resurrected_by_an_older_op_replayed_late(
    db_path: str,
) -> None:
    """An op made before the cutoff and journaled meets the tombstone and changes nothing."""
    old = time.time() - 1000
    store = SessionStore.open(db_path)
    sid = _old_session(store, old)
    late = [
        CreateSession(ts=old, session_id=sid, name="old"),
        PutCheckpoint(ts=old + 5, session_id=sid, checkpoint_id="c9"),
    ]
    store.prune_sessions(old + 100)
    store.close()
    store._journal.append(late)  # as a closed peer's writes would be
    with SessionStore.open(db_path) as again:
        assert again.list_sessions() == []
    assert _rows(db_path, sid) == dict.fromkeys(_rows(db_path, sid), 0)


def test_prune_after_close_is_journaled_and_applied_at_the_next_open(db_path: str) -> None:
    """A prune is an op: after close it is journaled (not lost, not raised) and replayed."""
    old = time.time() - 1000
    store = SessionStore.open(db_path)
    sid = _old_session(store, old)
    store.close()
    report = store.prune_sessions(old + 100)
    assert report.journaled and not report.complete
    assert _rows(db_path, sid)["sessions"] == 1
    with SessionStore.open(db_path):
        pass
    assert _rows(db_path, sid)["sessions"] == 0


def test_prune_and_vacuum_refuse_a_read_only_store_and_leave_it_untouched(db_path: str) -> None:
    """Read-only means read-only: StoreReadOnlyError, the file byte-identical."""
    with SessionStore.open(db_path) as store:
        _old_session(store, time.time() - 1000)
    before = _sha(db_path)
    with SessionStore.open(db_path, read_only=True) as ro:
        with pytest.raises(StoreReadOnlyError):
            ro.prune_sessions(time.time())
        with pytest.raises(StoreReadOnlyError):
            ro.vacuum()
    assert _sha(db_path) == before


def test_tombstones_go_only_past_the_horizon_and_the_oldest_journaled_op(
    store: SessionStore, tmp_path: Path
) -> None:
    """The rule: a tombstone goes once no op older than it can still be applied."""
    now = time.time()
    old, recent = _old_session(store, now - 10), _old_session(store, now - 10)
    store.apply_ops(
        [
            DeleteSession(ts=now - 7200, session_id=old),
            DeleteSession(ts=now - 60, session_id=recent),
        ]
    )
    report = prune_sessions(store, 0.0, tombstone_horizon_s=3600)
    assert report.tombstones == 1  # the 2 h old one; the 1 min old one is within the horizon
    with store.lease() as lease:
        keys = [r[0] for r in lease.execute("SELECT key FROM tombstones")]
    assert keys == [recent]
    # The journal bounds the cut: an op older than a tombstone that is still journaled keeps it.
    journal = tmp_path / "j.jsonl"
    lines = [
        LogEvent(ts=now - 30, session_id=recent, level="info", message="x").line,
        LogEvent(ts=now - 90, session_id=recent, level="info", message="x").line,
        b'{"torn',
    ]
    journal.write_bytes(b"".join(lines))
    assert oldest_journaled_ts(str(journal)) == pytest.approx(now - 90)
    assert oldest_journaled_ts(str(tmp_path / "none")) is None


def test_prune_racing_a_writer_loses_nothing_acknowledged_after_the_cutoff(db_path: str) -> None:
    """20 rounds: a writer process writes into old ended sessions while they are pruned."""
    store = SessionStore.open(db_path)
    writer = start("write_rounds", db_path)
    assert writer.stdin is not None and writer.stdout is not None
    bad: list[str] = []
    try:
        for rnd in range(20):
            now = time.time()
            sids = [_old_session(store, now - 1000) for _ in range(6)]
            targets = sids[:3]
            writer.stdin.write(" ".join(targets) + "\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "started"
            report = store.prune_sessions(now - 100)
            writer.stdin.write("end\n")
            writer.stdin.flush()
            outcome = json.loads(writer.stdout.readline())
            for sid, op_ids in outcome["acked"].items():
                try:
                    have = {e.op_id for e in store.events(sid, limit=10_000)}
                except SessionNotFoundError:
                    have = set()
                lost = set(op_ids) - have
                if lost:
                    bad.append(f"round {rnd}: {len(lost)} acknowledged event(s) lost in {sid}")
            for sid in sids[3:]:
                if _rows(db_path, sid)["sessions"]:
                    bad.append(f"round {rnd}: untouched old session {sid} not pruned")
            if report.sessions < 3:
                bad.append(f"round {rnd}: pruned {report.sessions} < 3")
        writer.stdin.write("quit\n")
        writer.stdin.flush()
        finish(writer)
    finally:
        if writer.returncode is None:
            writer.kill()
            writer.communicate()
        store.close()
    assert not bad, bad


def test_vacuum_shrinks_the_file_after_a_prune(db_path: str) -> None:
    """Pruned pages are given back to the filesystem; the data left is intact."""
    old = time.time() - 1000
    with SessionStore.open(db_path) as store:
        keep = store.create_session("keep").id
        for _ in range(40):
            sid = _old_session(store, old)
            store.apply_ops(
                [
                    LogEvent(ts=old + 2, session_id=sid, level="info", message="x" * 4000)
                    for _ in range(10)
                ]
            )
        store.log_event(keep, "still here")
        store.checkpoint()
        store.prune_sessions(old + 100)
        report = store.vacuum()
        assert report.bytes_after < report.bytes_before / 2
        assert [e.message for e in store.events(keep)] == ["still here"]
    conn = apsw.Connection(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_vacuum_is_bounded_by_the_write_deadline_against_a_held_lock(db_path: str) -> None:
    """A peer holding the write lock: StoreBusyError within the deadline, nothing changed."""
    SessionStore.open(db_path).close()
    holder = start("hold_write", db_path)
    try:
        config = StoreConfig(write_deadline_s=0.5, busy_timeout_ms=500, replay_on_open=False)
        with SessionStore.open(db_path, config=config) as store:
            t0 = time.monotonic()
            with pytest.raises(StoreBusyError):
                store.vacuum()
            assert time.monotonic() - t0 < 2.0
    finally:
        release([holder])
        finish(holder)


def test_backup_while_four_processes_write_holds_every_earlier_write(
    db_path: str, tmp_path: Path
) -> None:
    """3 backups during 4 writers: each passes integrity_check and has every earlier ack."""
    store = SessionStore.open(db_path)
    sid = store.create_session("busy").id
    acks = [tmp_path / f"ack{i}" for i in range(4)]
    writers = [start("write_until_told", db_path, sid, str(a)) for a in acks]
    try:
        release(writers)
        for w in writers:
            assert w.stdout is not None
            assert w.stdout.readline().strip() == "warm"
        for n in range(3):
            acknowledged = {line for a in acks for line in a.read_text().split()}
            dest = tmp_path / f"backup{n}.db"
            report = store.backup(str(dest))
            assert report.integrity == "ok"
            conn = apsw.Connection(str(dest), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                have = {str(r[0]) for r in conn.execute("SELECT op_id FROM events")}
                assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]
            finally:
                conn.close()
            missing = acknowledged - have
            assert not missing, f"backup {n}: {len(missing)} acknowledged event(s) missing"
            assert not os.path.exists(f"{dest}-wal")
    finally:
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("stop\n")
            w.stdin.flush()
        written = [int(finish(w).split()[-1]) for w in writers]
        store.close()
    assert all(n >= 50 for n in written)
    # Restorable: the copy opens as a store and takes writes.
    with SessionStore.open(str(tmp_path / "backup2.db")) as restored:
        assert restored.get_session(sid).name == "busy"
        restored.log_event(sid, "after restore")


def test_backup_refuses_an_existing_file_and_never_follows_a_planted_symlink(
    store: SessionStore, tmp_path: Path
) -> None:
    """Existing name, symlink, dangling symlink: refused untouched; --force replaces the name."""
    store.create_session("s")
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"precious")
    target = tmp_path / "target"
    target.write_bytes(b"not yours")
    link = tmp_path / "link.db"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.db"
    dangling.symlink_to(tmp_path / "nowhere")
    for dest in (existing, link, dangling):
        with pytest.raises(FileExistsError):
            store.backup(str(dest))
    assert existing.read_bytes() == b"precious"
    assert target.read_bytes() == b"not yours"
    assert not (tmp_path / "nowhere").exists()
    report = store.backup(str(link), force=True)
    assert not link.is_symlink() and report.integrity == "ok"
    assert target.read_bytes() == b"not yours"
    with pytest.raises(ValueError):
        store.backup(store.path, force=True)
    with pytest.raises(IsADirectoryError):
        store.backup(str(tmp_path), force=True)
    leftovers = [p.name for p in tmp_path.iterdir() if ".backup-" in p.name]
    assert leftovers == []


def test_resume_records_the_new_owner_or_clears_it(store: SessionStore) -> None:
    """claim: this process owns the session; otherwise no owner (never the dead one kept)."""
    from sessionstore import ProcessIdentity

    sid = _old_session(store, time.time() - 1000, status="paused")
    store.apply_ops([SetOwner(ts=time.time() - 900, session_id=sid, owner_pid=4242)])
    store.resume_session_with_owner(sid, claim=True)
    session = store.get_session(sid)
    assert session.status.value == "active" and session.owner == ProcessIdentity.current()
    store.pause_session(sid)
    store.resume_session_with_owner(sid, claim=False)
    assert store.get_session(sid).owner is None
    # A hand-over older than the last status change is stale and changes nothing.
    store.apply_ops([SetOwner(ts=time.time() - 3600, session_id=sid, owner_pid=4242)])
    assert store.get_session(sid).owner is None
    done = store.create_session("done").id
    store.set_status(done, "completed")
    with pytest.raises(InvalidTransitionError):
        store.resume_session_with_owner(done, claim=True)
