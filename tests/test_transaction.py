"""store.transaction(): several writes applied all or nothing, also when queued or journaled."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import SessionNotFoundError, SessionStore, StoreConfig
from sessionstore._ops import Batch, LogEvent, PutCheckpoint, SaveCheckpoint, op_from_line
from tests._support import ClosingInBackground, all_event_ids


def _journal_lines(store: SessionStore) -> list[bytes]:
    with open(store.journal_path, "rb") as f:
        return [line for line in f.read().split(b"\n") if line]


def test_all_applied_in_one_transaction(store: SessionStore, session_id: str) -> None:
    """A checkpoint and an event written in one transaction are both there afterwards."""
    with store.transaction() as tx:
        cp = tx.save_checkpoint(session_id, "state", {"step": 1})
        ev = tx.log_event(session_id, "saved", data={"cp": cp.id})
    assert store.latest_checkpoint(session_id, "state") == cp
    assert all_event_ids(store, session_id) == [ev.op_id]
    assert store.stats().applied == 2  # the session, then the batch: one write


def test_a_refused_member_applies_nothing(store: SessionStore, session_id: str) -> None:
    """One member naming an unknown session refuses the whole transaction: nothing applied."""

    def write() -> None:
        with store.transaction() as tx:
            tx.save_checkpoint(session_id, "state", {"step": 1})
            tx.log_event(session_id, "first")
            tx.log_event("no-such-session", "second")

    with pytest.raises(SessionNotFoundError):
        write()
    assert store.latest_checkpoint(session_id) is None
    assert all_event_ids(store, session_id) == []


def test_an_exception_in_the_block_writes_nothing(store: SessionStore, session_id: str) -> None:
    """An exception inside the with block discards every op; the exception propagates."""

    def write() -> None:
        with store.transaction() as tx:
            tx.save_checkpoint(session_id, "state", {"step": 1})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write()
    assert store.latest_checkpoint(session_id) is None
    assert store.stats().applied == 1  # only the session


def test_bad_input_raises_at_the_call_and_the_rest_applies(
    store: SessionStore, session_id: str
) -> None:
    """A tx method given bad input raises ValueError at once; the caller may go on."""
    with store.transaction() as tx:
        with pytest.raises(ValueError, match=r"NaN|JSON"):
            tx.save_checkpoint(session_id, "bad", {"x": float("nan")})
        tx.save_checkpoint(session_id, "good", {"x": 1})
    assert [c.name for c in store.list_checkpoints(session_id)] == ["good"]


def test_a_finished_transaction_cannot_be_used(store: SessionStore, session_id: str) -> None:
    """Using tx after its block ended raises RuntimeError (its ops were already written)."""
    with store.transaction() as tx:
        pass
    with pytest.raises(RuntimeError):
        tx.log_event(session_id, "late")


def test_queued_while_closing_as_one_unit(db_path: str) -> None:
    """While close drains, a transaction is one queued entry, applied by the close."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    with ClosingInBackground(store) as closing:
        with store.transaction() as tx:
            tx.save_checkpoint(sid, "state", {"n": 1})
            tx.log_event(sid, "one")
            tx.log_event(sid, "two")
        assert store.stats().pending == 1
        report = closing.finish()
    assert report.applied_from_queue == 1
    with SessionStore.open(db_path) as again:
        assert again.latest_checkpoint(sid, "state") is not None
        assert len(all_event_ids(again, sid)) == 2


def test_journaled_after_close_as_one_line_replayed_together(db_path: str) -> None:
    """After close a transaction is one journal line; the next open applies all of it."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    with store.transaction() as tx:
        tx.save_checkpoint(sid, "state", {"n": 1})
        for i in range(5):
            tx.log_event(sid, f"event {i}")
    assert len(_journal_lines(store)) == 1
    with SessionStore.open(db_path) as again:
        assert again.open_replay.applied == 1
        assert again.latest_checkpoint(sid, "state") is not None
        assert len(all_event_ids(again, sid)) == 5


def test_a_journaled_transaction_with_a_bad_member_is_kept_aside_whole(db_path: str) -> None:
    """At replay, a batch with one refused member applies none of its members."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    with store.transaction() as tx:
        tx.save_checkpoint(sid, "state", {"n": 1})
        tx.log_event(sid, "applied only with the rest")
        tx.log_event("no-such-session", "refused")
    with SessionStore.open(db_path) as again:
        assert again.open_replay.rejected == 1
        assert again.latest_checkpoint(sid) is None
        assert all_event_ids(again, sid) == []


def test_replaying_a_transaction_twice_changes_nothing(db_path: str) -> None:
    """A batch applied again (a replay after a crash before truncation) is harmless."""
    with SessionStore.open(db_path, config=StoreConfig()) as store:
        sid = store.create_session("s").id
        batch = Batch(
            ops=[
                SaveCheckpoint(session_id=sid, name="a", data=1),
                LogEvent(session_id=sid, message="m"),
            ]
        )
        assert store.apply_ops([batch, batch]) == [None, None]
        assert len(store.list_checkpoints(sid)) == 1
        assert len(all_event_ids(store, sid)) == 1


@given(
    data=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=10,
    ),
    blob=st.none() | st.binary(max_size=64),
)
def test_batch_line_round_trips_byte_exact(data: object, blob: bytes | None) -> None:
    """A batch read back from its journal line is the same op with the same bytes."""
    import base64

    members = [
        SaveCheckpoint(session_id="s", name="n", data=data),
        PutCheckpoint(
            session_id="s",
            checkpoint_id="c",
            data=data,
            metadata={"m": data},
            blob=None if blob is None else base64.b64encode(blob).decode(),
        ),
        LogEvent(session_id="s", message="m", data=data),
    ]
    batch = Batch(ops=members)
    again = op_from_line(batch.line)
    assert again == batch
    assert again.line == batch.line
