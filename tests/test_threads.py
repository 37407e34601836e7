"""Keyed sessions, keyed checkpoints with writes, and deletions ordered by op time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionstore import SessionStore, StoreConfig
from sessionstore._ops import session_id_for_key
from tests._support import all_event_ids

WORKERS = str(Path(__file__).with_name("thread_workers.py"))
NO_REPLAY = StoreConfig(replay_on_open=False)


# ----------------------------------------------------------------------------- keyed sessions


def test_get_or_create_by_key_returns_the_same_session(store: SessionStore) -> None:
    """Asking twice for one key gives the first session; its name and metadata stay."""
    first = store.get_or_create_session_by_key("thread-1", metadata={"v": 1})
    again = store.get_or_create_session_by_key("thread-1", name="other", metadata={"v": 2})
    assert again == first
    assert first.key == "thread-1" and first.name == "thread-1"
    assert store.find_session_by_key("thread-1") == first
    assert store.find_session_by_key("thread-2") is None
    assert len(store.list_sessions()) == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "bad\udcff"])
def test_bad_keys_are_refused(store: SessionStore, key: str) -> None:
    """An empty, too long or non-UTF-8 key is a ValueError; nothing is written."""
    with pytest.raises(ValueError, match="key"):
        store.get_or_create_session_by_key(key)
    assert store.list_sessions() == []


@pytest.mark.slow
def test_16_processes_asking_for_one_new_key_get_one_session(db_path: str) -> None:
    """16 processes released together on a new key, 20 rounds: every round, one session."""
    SessionStore.open(db_path).close()  # migrate once, outside the race
    procs = [
        subprocess.Popen(
            [sys.executable, WORKERS, "keyed", db_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(16)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for rnd in range(20):
            key = f"conversation-{rnd}"
            for proc in procs:  # every worker starts on the same line
                assert proc.stdin is not None
                proc.stdin.write(key + "\n")
                proc.stdin.flush()
            ids = {proc.stdout.readline().strip() for proc in procs if proc.stdout}
            assert ids == {session_id_for_key(key)}, f"round {rnd}: {ids}"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    with SessionStore.open(db_path) as store:
        sessions = store.list_sessions()
        assert len(sessions) == 20
        assert {s.key for s in sessions} == {f"conversation-{r}" for r in range(20)}


# ----------------------------------------------------------------------------- checkpoints


def test_keyed_checkpoints_round_trip_with_bytes_and_namespaces(
    store: SessionStore, session_id: str
) -> None:
    """Caller ids, parents, metadata and binary payloads come back as written, per namespace."""
    blob = bytes(range(256))
    store.put_checkpoint(session_id, "001", {"a": 1}, metadata={"step": 1}, blob=blob)
    store.put_checkpoint(session_id, "002", {"a": 2}, parent_id="001", metadata={"step": 2})
    store.put_checkpoint(session_id, "001", {"sub": 1}, namespace="child:1")
    got = store.get_checkpoint(session_id, "001")
    assert got is not None
    assert (got.data, got.blob, got.metadata, got.namespace) == ({"a": 1}, blob, {"step": 1}, "")
    assert [c.id for c in store.find_checkpoints(session_id, namespace="")] == ["002", "001"]
    assert store.find_checkpoints(session_id, namespace="")[0].parent_id == "001"
    sub = store.find_checkpoints(session_id, namespace="child:1")
    assert [(c.id, c.data) for c in sub] == [("001", {"sub": 1})]
    assert store.get_checkpoint("no-such-session", "001") is None


def test_find_filters_before_and_limit(store: SessionStore, session_id: str) -> None:
    """Newest first by id; metadata filters compare as JSON; before and limit page."""
    for i in range(6):
        store.put_checkpoint(
            session_id, f"{i:03}", i, metadata={"step": i, "even": i % 2 == 0, "tag": "t"}
        )
    ids = [c.id for c in store.find_checkpoints(session_id)]
    assert ids == ["005", "004", "003", "002", "001", "000"]
    assert [c.id for c in store.find_checkpoints(metadata={"even": True})] == ["004", "002", "000"]
    assert [c.id for c in store.find_checkpoints(metadata={"step": 3, "tag": "t"})] == ["003"]
    assert store.find_checkpoints(metadata={"step": "3"}) == []  # JSON: 3 is not "3"
    page = store.find_checkpoints(session_id, before="004", limit=2)
    assert [c.id for c in page] == ["003", "002"]
    with pytest.raises(ValueError, match="limit"):
        store.find_checkpoints(limit=0)
    with pytest.raises(ValueError, match="filter key"):
        store.find_checkpoints(metadata={'a"b': 1})


def test_put_is_an_upsert_where_the_newest_op_wins(store: SessionStore, session_id: str) -> None:
    """A second put replaces the row; an older put applied later changes nothing."""
    from sessionstore._transaction import make_put_checkpoint

    def put(data: int) -> object:
        return make_put_checkpoint(
            session_id,
            "c",
            data,
            namespace="",
            parent_id=None,
            name="n",
            metadata=None,
            blob=None,
            run_id=None,
        )

    old, new = put(1), put(2)
    assert store.apply_ops([new, old]) == [None, None]  # type: ignore[list-item]
    got = store.get_checkpoint(session_id, "c")
    assert got is not None and got.data == 2
    store.put_checkpoint(session_id, "c", 3)
    got = store.get_checkpoint(session_id, "c")
    assert got is not None and got.data == 3
    assert len(store.find_checkpoints(session_id)) == 1


def test_writes_are_idempotent_on_task_and_idx_unless_replacing(
    store: SessionStore, session_id: str
) -> None:
    """The first value of (task_id, idx) stays; a replacing write takes the newest."""
    store.put_checkpoint(session_id, "c", None)
    store.put_writes(session_id, "c", "t1", [(0, "a", "json", b"1"), (1, "b", "json", b"2")])
    store.put_writes(session_id, "c", "t1", [(0, "a", "json", b"changed")])
    store.put_writes(session_id, "c", "t1", [(-1, "__error__", "json", b"e1")], replace=True)
    store.put_writes(session_id, "c", "t1", [(-1, "__error__", "json", b"e2")], replace=True)
    writes = store.checkpoint_writes(session_id, "c")
    assert [(w.idx, w.channel, w.blob) for w in writes] == [
        (-1, "__error__", b"e2"),
        (0, "a", b"1"),
        (1, "b", b"2"),
    ]


# ----------------------------------------------------------------------------- deletions


def _closed_then(db_path: str) -> tuple[SessionStore, str]:
    """A store with a keyed session and checkpoint 001, closed: its writes now journal."""
    store = SessionStore.open(db_path)
    sid = store.get_or_create_session_by_key("thread").id
    store.put_checkpoint(sid, "001", 1, run_id="run-a")
    store.close()
    return store, sid


def test_a_late_delete_does_not_destroy_newer_rows(db_path: str) -> None:
    """A delete journaled at T, replayed after writes made after T, leaves those writes."""
    closed, sid = _closed_then(db_path)
    closed.delete_session(sid)  # journaled at T
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.put_checkpoint(sid, "002", 2)  # after T
        other.log_event(sid, "after the delete")
        assert other.replay().applied == 1
        assert [c.id for c in other.find_checkpoints(sid)] == ["002"]
        assert len(all_event_ids(other, sid)) == 1
        assert other.find_session_by_key("thread") is not None


def test_a_late_write_does_not_resurrect_a_deleted_session(db_path: str) -> None:
    """Writes journaled before a delete, replayed after it, bring nothing back."""
    closed, sid = _closed_then(db_path)
    closed.get_or_create_session_by_key("thread")  # journaled before the delete
    closed.put_checkpoint(sid, "003", 3)
    closed.log_event(sid, "before the delete")
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.delete_session(sid)
        report = other.replay()
        assert (report.applied, report.rejected) == (3, 0)
        assert other.find_session_by_key("thread") is None
        assert other.find_checkpoints(sid) == []
        # A new ask for the key after the delete makes a new, empty session.
        fresh = other.get_or_create_session_by_key("thread")
        assert fresh.id == sid and other.find_checkpoints(sid) == []


def test_a_late_prune_keeps_newer_checkpoints(db_path: str) -> None:
    """prune(keep=1) journaled at T keeps the newest as of T and everything newer."""
    store = SessionStore.open(db_path)
    sid = store.get_or_create_session_by_key("thread").id
    for i in range(3):
        store.put_checkpoint(sid, f"{i:03}", i)
    store.close()
    store.prune_checkpoints(sid, 1)  # journaled at T: keeps 002 of 000..002
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.put_checkpoint(sid, "003", 3)
        other.replay()
        assert [c.id for c in other.find_checkpoints(sid)] == ["003", "002"]


def test_a_pruned_checkpoint_is_not_resurrected_by_a_late_put(db_path: str) -> None:
    """A put journaled before a prune that deleted its row, replayed later, stays deleted."""
    store = SessionStore.open(db_path)
    sid = store.get_or_create_session_by_key("thread").id
    store.put_checkpoint(sid, "000", 0)
    store.put_checkpoint(sid, "001", 1)
    store.close()
    store.put_checkpoint(sid, "000", "late update")  # journaled before the prune
    store.put_writes(sid, "000", "task", [(0, "ch", None, b"w")])
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.prune_checkpoints(sid, 1)
        other.replay()
        assert [c.id for c in other.find_checkpoints(sid)] == ["001"]
        assert other.checkpoint_writes(sid, "000") == []


def test_a_late_delete_runs_spares_newer_and_buries_older(db_path: str) -> None:
    """delete_runs at T: a newer put of the run stays; an older one replayed later stays gone."""
    closed, sid = _closed_then(db_path)  # 001 made by run-a
    closed.put_checkpoint(sid, "002", 2, run_id="run-a")  # journaled before the delete
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.delete_runs(["run-a"])
        other.put_checkpoint(sid, "003", 3, run_id="run-a")  # after the delete
        other.replay()
        assert [c.id for c in other.find_checkpoints(sid)] == ["003"]


def test_a_late_copy_copies_only_what_existed(db_path: str) -> None:
    """copy_session journaled at T, replayed after newer source writes, copies only older rows."""
    store = SessionStore.open(db_path)
    src = store.get_or_create_session_by_key("src").id
    dst = store.get_or_create_session_by_key("dst").id
    store.put_checkpoint(src, "001", 1)
    store.put_writes(src, "001", "t", [(0, "ch", "json", b"v")])
    store.put_checkpoint(dst, "009", "own row")
    store.close()
    store.copy_session(src, dst)
    with SessionStore.open(db_path, config=NO_REPLAY) as other:
        other.put_checkpoint(src, "002", 2)  # after the copy was made
        other.put_checkpoint(dst, "001", "newer in the target")
        other.replay()
        assert [c.id for c in other.find_checkpoints(dst)] == ["009", "001"]
        got = other.get_checkpoint(dst, "001")
        assert got is not None and got.data == "newer in the target"  # not overwritten
        assert [w.blob for w in other.checkpoint_writes(dst, "001")] == [b"v"]


def test_deleting_an_unknown_session_changes_nothing(store: SessionStore, session_id: str) -> None:
    """delete_session of an id that never existed is a no-op; others are untouched."""
    store.delete_session("never-existed")
    assert [s.id for s in store.list_sessions()] == [session_id]


def test_binary_payloads_and_writes_survive_the_journal(db_path: str) -> None:
    """After close, a keyed checkpoint with bytes and its writes are journaled and replayed."""
    store = SessionStore.open(db_path)
    sid = store.get_or_create_session_by_key("thread").id
    store.close()
    blob = bytes(range(256)) * 4
    with store.transaction() as tx:
        tx.put_checkpoint(sid, "001", {"a": 1}, metadata={"step": 1}, blob=blob, namespace="ns")
        tx.put_writes(sid, "001", "task", [(0, "ch", "bytes", b"\x00\xff")], namespace="ns")
    with SessionStore.open(db_path) as again:
        assert again.open_replay.applied == 1
        got = again.get_checkpoint(sid, "001", namespace="ns")
        assert got is not None and got.blob == blob and got.metadata == {"step": 1}
        [write] = again.checkpoint_writes(sid, "001", namespace="ns")
        assert write.blob == b"\x00\xff"


# ----------------------------------------------------------------------------- the ordering rule

_SID = session_id_for_key("prop")


def _op_at(kind: str, arg: int, ts: float) -> object:
    from sessionstore._ops import Batch, CreateSession, DeleteRuns, DeleteSession, PutCheckpoint

    if kind == "put":
        return Batch(
            ts=ts,
            ops=[
                CreateSession(session_id=_SID, key="prop", name="prop", ts=ts),
                PutCheckpoint(
                    session_id=_SID,
                    checkpoint_id=f"{arg % 4:03}",
                    data=ts,
                    run_id=f"run-{arg % 2}",
                    ts=ts,
                ),
            ],
        )
    if kind == "delete_session":
        return DeleteSession(session_id=_SID, ts=ts)
    return DeleteRuns(run_ids=[f"run-{arg % 2}"], ts=ts)


def _final_checkpoints(ops: list[object]) -> list[tuple[str, object]]:
    import tempfile

    with tempfile.TemporaryDirectory() as d, SessionStore.open(f"{d}/p.db") as store:
        store.apply_ops(ops)  # type: ignore[arg-type]
        return sorted((c.id, c.data) for c in store.find_checkpoints(_SID))


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "delete_session", "delete_runs"]),
            st.integers(0, 7),
        ),
        min_size=1,
        max_size=8,
    ),
    order=st.randoms(use_true_random=False),
)
def test_puts_and_deletes_end_the_same_in_any_apply_order(steps: list[Any], order: Any) -> None:
    """Puts, session deletes and run deletes reach one state whatever order they apply in."""
    ops = [_op_at(kind, arg, 1000.0 + i) for i, (kind, arg) in enumerate(steps)]
    shuffled = list(ops)
    order.shuffle(shuffled)
    assert _final_checkpoints(shuffled) == _final_checkpoints(ops)
