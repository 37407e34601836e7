"""Writes as data: ops survive JSON, validate their input, and applying twice equals once."""

from __future__ import annotations

import math
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionstore import SessionStore
from sessionstore._ops import (
    MAX_NAME_CHARS,
    AddChild,
    CreateSession,
    Heartbeat,
    LogEvent,
    RemoveChild,
    SaveCheckpoint,
    SetStatus,
    new_id,
    op_adapter,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(min_size=1, max_size=MAX_NAME_CHARS)
sids = st.text(min_size=1, max_size=40)
pids = st.integers(min_value=2, max_value=2**31 - 1)

ops = st.one_of(
    st.builds(
        CreateSession,
        name=names,
        objective=st.none() | st.text(max_size=50),
        metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    ),
    st.builds(SetStatus, session_id=sids, status=st.sampled_from(["active", "paused", "stopped"])),
    st.builds(Heartbeat, session_id=sids),
    st.builds(SaveCheckpoint, session_id=sids, name=names, data=json_values),
    st.builds(
        LogEvent,
        session_id=sids,
        message=st.text(max_size=100),
        data=json_values,
        level=st.sampled_from(["debug", "info", "warning", "error", "critical"]),
    ),
    st.builds(
        AddChild,
        session_id=sids,
        pid=pids,
        start_ticks=st.integers(0, 2**40),
        boot_id=st.text(min_size=1, max_size=36),
        pgid=st.none() | pids,
        argv=st.lists(st.text(max_size=10), max_size=3),
    ),
    st.builds(
        RemoveChild,
        session_id=sids,
        pid=pids,
        exit_code=st.none() | st.integers(-64, 255),
        state=st.sampled_from(["exited", "killed", "unkillable", "gone"]),
    ),
)


@given(ops)
def test_op_json_round_trip(op: Any) -> None:
    """Op -> JSON -> op gives the same op, for every op kind and any JSON payload."""
    again = op_adapter.validate_json(op_adapter.dump_json(op))
    assert again == op
    assert type(again) is type(op)


@given(
    st.one_of(
        st.sets(st.integers(), min_size=1),
        st.builds(object),
        st.just(float("nan")),
        st.just(math.inf),
        st.binary(min_size=1),
    )
)
def test_non_json_data_rejected(bad: Any) -> None:
    """Data that is not strict JSON (sets, objects, NaN, infinity, bytes) is a ValueError."""
    with pytest.raises(ValueError):
        LogEvent(session_id="s", message="m", data={"bad": bad})
    with pytest.raises(ValueError):
        SaveCheckpoint(session_id="s", name="c", data=[bad])


@given(st.one_of(st.just(""), st.text(min_size=MAX_NAME_CHARS + 1, max_size=MAX_NAME_CHARS + 20)))
def test_bad_names_rejected(name: str) -> None:
    """Names are non-empty and bounded."""
    with pytest.raises(ValueError):
        CreateSession(name=name)
    with pytest.raises(ValueError):
        SaveCheckpoint(session_id="s", name=name, data=None)


@given(st.integers(max_value=1) | st.integers(min_value=2**31))
def test_bad_pids_rejected(pid: int) -> None:
    """Child pids must be > 1 and fit a pid_t."""
    with pytest.raises(ValueError):
        AddChild(session_id="s", pid=pid, start_ticks=1, boot_id="b")


def test_unknown_op_kind_rejected() -> None:
    """A JSON line with an unknown kind does not validate (it would be kept aside on replay)."""
    with pytest.raises(ValueError):
        op_adapter.validate_json(b'{"kind": "drop_table", "op_id": "x", "ts": 1}')


def test_new_ids_sort_in_creation_order() -> None:
    """new_id() values made in a burst are unique and sort in the order they were made."""
    ids = [new_id() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def _dump(store: SessionStore) -> list[Any]:
    with store.lease() as lease:
        return [
            lease.execute("SELECT * FROM sessions ORDER BY id"),
            lease.execute("SELECT * FROM checkpoints ORDER BY id"),
            lease.execute("SELECT * FROM events ORDER BY id"),
            lease.execute("SELECT * FROM child_processes ORDER BY pid"),
        ]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_applying_twice_equals_applying_once(store: SessionStore, data: st.DataObject) -> None:
    """Replaying any sequence of ops a second time leaves the database exactly as once did."""
    create = CreateSession(name="s")
    sid = create.session_id
    per_session = st.one_of(
        st.builds(
            SetStatus,
            session_id=st.just(sid),
            status=st.sampled_from(["active", "paused", "stopped", "completed"]),
        ),
        st.builds(Heartbeat, session_id=st.just(sid)),
        st.builds(SaveCheckpoint, session_id=st.just(sid), name=names, data=json_values),
        st.builds(
            LogEvent, session_id=st.just(sid), message=st.text(max_size=30), data=json_values
        ),
        st.builds(
            AddChild,
            session_id=st.just(sid),
            pid=st.integers(2, 50),
            start_ticks=st.integers(0, 3),
            boot_id=st.just("b"),
        ),
        st.builds(
            RemoveChild,
            session_id=st.just(sid),
            pid=st.integers(2, 50),
            exit_code=st.none() | st.integers(0, 3),
        ),
    )
    sequence = [create, *data.draw(st.lists(per_session, max_size=15))]
    store.apply_ops(sequence)
    once = _dump(store)
    errors = store.apply_ops(sequence)
    assert _dump(store) == once
    # Replays are not errors, except transitions the final state forbids (rejected, no change).
    assert all(e is None or "cannot make it" in str(e) for e in errors)


def test_event_replay_keeps_its_first_id(store: SessionStore, session_id: str) -> None:
    """An event applied twice keeps one row and the id it got the first time."""
    op = LogEvent(session_id=session_id, message="once")
    [first] = store.apply_ops([op])
    assert first is None
    store.apply_ops([op, op])
    assert [e.message for e in store.events(session_id)] == ["once"]


def test_stale_status_op_changes_nothing(store: SessionStore, session_id: str) -> None:
    """A status op older than the last status change (a late replay) is a no-op."""
    old = SetStatus(session_id=session_id, status="paused", ts=1.0)
    store.stop_session(session_id)
    assert store.apply_ops([old]) == [None]
    assert store.get_session(session_id).status.value == "stopped"


def test_apply_outside_transaction_is_rejected_by_sqlite(store: SessionStore) -> None:
    """ConstraintErrors other than a missing session are not disguised as SessionNotFound."""
    with pytest.raises(apsw.ConstraintError):
        store._writer.apply(
            LogEvent.model_construct(  # bypasses validation to reach SQLite's CHECK
                op_id="x",
                ts=1.0,
                kind="log_event",
                session_id=store.create_session("s").id,
                level="loud",
                message="m",
                data=None,
            )
        )
