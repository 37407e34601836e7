"""Writes as data: ops survive JSON, validate their input, and applying twice equals once."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from _support import ClosingInBackground
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sessionstore import SessionStore
from sessionstore._ops import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_CHARS,
    MAX_NAME_CHARS,
    MAX_OP_BYTES,
    AddChild,
    CreateSession,
    Heartbeat,
    LogEvent,
    RemoveChild,
    SaveCheckpoint,
    SetStatus,
    dump_json,
    encode_json,
    new_id,
    op_adapter,
    op_from_line,
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


# ------------------------------------------------------------------ canonical from construction


def _nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


int64_edges = st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX])
_small_values = st.recursive(
    json_scalars | int64_edges | st.text(max_size=5),  # any code point but lone surrogates
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _up_to_depth(depth: int) -> st.SearchStrategy[Any]:
    """Small JSON values, or one nested exactly ``depth`` (or one less) levels deep."""
    return _small_values | st.builds(_nested, st.sampled_from([depth - 1, depth]), json_scalars)


edge_values = _up_to_depth(MAX_JSON_DEPTH)
long_names = st.sampled_from(["n", "\x00", "é" * MAX_NAME_CHARS, "\U0001f600" * MAX_NAME_CHARS])


def _session_rows(store: SessionStore, sid: str) -> list[Any]:
    with store.lease() as lease:
        return [
            lease.execute("SELECT * FROM sessions WHERE id = ?", (sid,)),
            lease.execute("SELECT * FROM checkpoints WHERE session_id = ? ORDER BY id", (sid,)),
            lease.execute(
                "SELECT op_id, session_id, level, message, data, created_at FROM events "
                "WHERE session_id = ? ORDER BY id",
                (sid,),
            ),
            lease.execute(
                "SELECT * FROM child_processes WHERE session_id = ? ORDER BY pid, start_ticks",
                (sid,),
            ),
        ]


@pytest.fixture
def two_stores(tmp_path: Any) -> Any:
    """One store written directly, one written only through its journal."""
    direct = SessionStore.open(f"{tmp_path}/direct.db")
    journaled = SessionStore.open(f"{tmp_path}/journaled.db")
    yield direct, journaled
    direct.close()
    journaled.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_construct_apply_journal_replay_gives_the_same_row(
    two_stores: Any, data: st.DataObject
) -> None:
    """Construct => apply => journal => replay gives the same rows, for every kind and bound.

    Each op is read back from its own bytes unchanged, and the store that only saw the journal
    ends with exactly the rows of the store the ops were applied to directly.
    """
    direct, journaled = two_stores
    create = CreateSession(
        name=data.draw(long_names),
        objective=data.draw(st.none() | st.just("o" * MAX_MESSAGE_CHARS) | st.text(max_size=9)),
        metadata=data.draw(
            st.dictionaries(st.text(max_size=4), _up_to_depth(MAX_JSON_DEPTH - 1), max_size=3)
        ),
        owner_pid=data.draw(st.none() | int64_edges),
        owner_start_ticks=data.draw(st.none() | int64_edges),
    )
    sid = create.session_id
    per_session = st.one_of(
        st.builds(SetStatus, session_id=st.just(sid), status=st.sampled_from(["paused", "active"])),
        st.builds(Heartbeat, session_id=st.just(sid)),
        st.builds(SaveCheckpoint, session_id=st.just(sid), name=long_names, data=edge_values),
        st.builds(
            LogEvent,
            session_id=st.just(sid),
            message=st.text(max_size=30) | st.just("m" * MAX_MESSAGE_CHARS),
            data=edge_values,
        ),
        st.builds(
            AddChild,
            session_id=st.just(sid),
            pid=st.sampled_from([2, 2**31 - 1]),
            start_ticks=st.sampled_from([0, INT64_MAX]),
            boot_id=st.text(min_size=1, max_size=8),
            pgid=st.none() | int64_edges,
            argv=st.lists(st.text(max_size=6), max_size=3),
        ),
        st.builds(
            RemoveChild,
            session_id=st.just(sid),
            pid=st.sampled_from([2, 2**31 - 1]),
            exit_code=st.none() | int64_edges,
        ),
    )
    sequence = [create, *data.draw(st.lists(per_session, max_size=6))]
    for op in sequence:
        again = op_from_line(op.line)
        assert again == op and again.line == op.line  # the bytes read back are the bytes made
    direct_results = direct.apply_ops(sequence)
    journaled._journal.append(sequence)
    report = journaled.replay()
    assert report.invalid == 0 and report.torn == 0
    assert report.applied + report.rejected == len(sequence)
    assert report.rejected == sum(r is not None for r in direct_results)
    assert _session_rows(journaled, sid) == _session_rows(direct, sid)


def test_payload_bytes_are_what_the_database_stores(store: SessionStore, session_id: str) -> None:
    """The JSON column holds the op's payload text and the journal line embeds the same text."""
    op = LogEvent(session_id=session_id, message="m", data={"é": [1, 2.5, None, "\U0001f600"]})
    store.apply_ops([op])
    with store.lease() as lease:
        [(stored,)] = lease.execute("SELECT data FROM events WHERE op_id = ?", (op.op_id,))
    assert stored == op.payload_json
    assert op.payload_json is not None and op.payload_json.encode() in op.line


def _lone_surrogate_calls(sid: str) -> list[Callable[[SessionStore], Any]]:
    bad = "file-\udcff.txt"  # what os.fsdecode gives for a Latin-1 file name byte
    return [
        lambda s: s.log_event(sid, bad),
        lambda s: s.log_event(sid, "m", data={"name": bad}),
        lambda s: s.log_event(sid, "m", data={bad: 1}),
        lambda s: s.save_checkpoint(sid, bad, None),
        lambda s: s.create_session(bad),
        lambda s: s.create_session("n", metadata={"argv": [bad]}),
    ]


def _out_of_rule_calls(sid: str) -> list[Callable[[SessionStore], Any]]:
    return [
        lambda s: s.save_checkpoint(sid, "deep", _nested(MAX_JSON_DEPTH + 1)),
        lambda s: s.save_checkpoint(sid, "deeper", _nested(1000)),
        lambda s: s.log_event(sid, "m", data=_nested(100_000)),
        lambda s: s.log_event(sid, "m", data={1: "a", "1": "b"}),
        lambda s: s.log_event(sid, "m", data={"k": {True: 1, "true": 2}}),
        lambda s: s.log_event(sid, "m", data={(1, 2): "tuple key"}),
        lambda s: s.log_event(sid, "m", data=2**63),
        lambda s: s.log_event(sid, "m", data=[-(2**63) - 1]),
        lambda s: s.remove_child(sid, 4242, exit_code=2**64),
        lambda s: s.remove_child(sid, 4242, exit_code=-(2**63) - 1),
        lambda s: s.save_checkpoint(sid, "big", "x" * (MAX_OP_BYTES + 1)),
    ]


def _refused_everywhere(store: SessionStore, sid: str) -> None:
    for call in _lone_surrogate_calls(sid) + _out_of_rule_calls(sid):
        with pytest.raises(ValueError) as info:
            call(store)
        assert not isinstance(info.value, RecursionError)


def test_rules_are_the_same_in_every_state(db_path: str) -> None:
    """Out-of-rule values are a ValueError at the call, open, closing or closed alike.

    Lone surrogates, depth past the bound (even 100,000 deep), colliding or non-JSON keys, ints
    past 64 bits and oversize ops: nothing of them is applied, queued or journaled.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    _refused_everywhere(store, sid)
    with ClosingInBackground(store) as closing:
        _refused_everywhere(store, sid)
        assert store.stats().pending == 0
        report = closing.finish()
    assert report.errors == [] and report.unrecorded == []
    _refused_everywhere(store, sid)
    assert store.stats().journaled == 0 and not os.path.exists(store.journal_path)
    with SessionStore.open(db_path) as reopened:
        assert reopened.events(sid) == [] and reopened.list_checkpoints(sid) == []


def test_depth_at_the_bound_is_accepted_and_replays(db_path: str) -> None:
    """Data exactly MAX_JSON_DEPTH deep is accepted after close and the next open applies it."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    deep = _nested(MAX_JSON_DEPTH, "leaf")
    store.save_checkpoint(sid, "deep", deep)
    with SessionStore.open(db_path) as reopened:
        assert reopened.open_replay.applied == 1 and reopened.open_replay.invalid == 0
        latest = reopened.latest_checkpoint(sid)
        assert latest is not None and latest.data == deep


def test_payload_is_copied_at_construction() -> None:
    """Mutating the caller's dict after the call changes neither the op nor its bytes."""
    data = {"a": [1]}
    op = SaveCheckpoint(session_id="s", name="c", data=data)
    line = op.line
    data["a"].append(2)
    assert op.data == {"a": [1]} and op.line == line


def test_non_str_keys_become_their_json_text_at_construction(
    store: SessionStore, session_id: str
) -> None:
    """{1: "a", None: "b"} is {"1": "a", "null": "b"} in the op, the returned model and the row."""
    checkpoint = store.save_checkpoint(session_id, "c", {1: "a", None: "b", 2.5: {False: 0}})
    expected = {"1": "a", "null": "b", "2.5": {"false": 0}}
    assert checkpoint.data == expected
    assert store.latest_checkpoint(session_id) == checkpoint


def _oracle(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` breaks a payload rule (a plain recursive reading of the rules), or None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "int"
    if depth + 1 > MAX_JSON_DEPTH:
        return "depth"
    if isinstance(value, dict):
        texts = [json.dumps(k) if k is None or isinstance(k, bool) else str(k) for k in value]
        if len(set(texts)) < len(texts):
            return "keys"
        children: Any = value.values()
    else:
        children = value
    reasons = [_oracle(child, depth + 1) for child in children]
    return next((r for r in reasons if r is not None), None)


wild_keys = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["1", "-1", "true"])
wild_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(wild_keys, inner, max_size=3)
        | st.builds(_nested, st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1), inner)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(wild_values)
def test_payload_accepted_exactly_when_the_rules_allow(value: Any) -> None:
    """Construction fails exactly when a payload rule is broken, for any nesting, int and key mix.

    What it accepts reads back from its own bytes unchanged.
    """
    reason = _oracle(value)
    try:
        op = SaveCheckpoint(session_id="s", name="c", data=value)
    except ValueError:
        assert reason is not None
        return
    assert reason is None, reason
    assert op.data == json.loads(op.payload_json or "null")
    again = op_from_line(op.line)
    assert again == op and again.line == op.line


# ------------------------------------------------------------------ fast constructors


_any_text = st.text(max_size=70) | st.sampled_from(["", "\udc80", "a\ud800b", "x" * 65])
_levels = st.sampled_from(["debug", "info", "warning", "error", "critical", "loud", ""])
_payloads = (
    edge_values
    | st.builds(_nested, st.just(MAX_JSON_DEPTH + 1))
    | st.sampled_from([float("nan"), {1: "a", "1": "b"}, {"k": INT64_MAX + 1}, {"k": object()}])
    | st.dictionaries(st.text(max_size=4), json_scalars | int64_edges, max_size=5)
)


def _why(err: ValidationError) -> list[tuple[Any, ...]]:
    return [(e["loc"], e["msg"], e["type"]) for e in err.errors()]


def _same_op(fast: Callable[[], Any], slow: Callable[[str, float], Any]) -> None:
    fast_err: ValidationError | None = None
    try:
        made = fast()
    except ValidationError as err:
        fast_err = err
    if fast_err is not None:
        with pytest.raises(ValidationError) as slow_err:
            slow(new_id(), 0.0)
        assert _why(fast_err) == _why(slow_err.value)
        return
    validated = slow(made.op_id, made.ts)
    # The line first: a fast constructor may build it on first use (Heartbeat.make), and
    # pydantic's == compares the private attributes that hold it.
    assert made.line == validated.line
    assert made == validated
    assert made.payload_json == validated.payload_json
    assert made.model_dump() == validated.model_dump()
    assert made.model_fields_set == validated.model_fields_set - {"op_id", "ts"}
    assert op_from_line(made.line) == made


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(sid=_any_text, message=_any_text, level=_levels, data=_payloads)
def test_log_event_make_is_the_validated_op(sid: str, message: str, level: str, data: Any) -> None:
    """LogEvent.make builds the validated op byte for byte, or raises its very error."""
    _same_op(
        lambda: LogEvent.make(sid, message, level, data),
        lambda op_id, ts: LogEvent(
            op_id=op_id, ts=ts, session_id=sid, message=message, level=level, data=data
        ),
    )


@settings(max_examples=200)
@given(sid=_any_text)
def test_heartbeat_make_is_the_validated_op(sid: str) -> None:
    """Heartbeat.make builds the validated op byte for byte, or raises its very error."""
    _same_op(
        lambda: Heartbeat.make(sid),
        lambda op_id, ts: Heartbeat(op_id=op_id, ts=ts, session_id=sid),
    )


def test_fast_ops_copy_pickle_and_stay_frozen() -> None:
    """An op built fast copies, pickles and refuses changes like a validated one."""
    import copy
    import pickle

    op = LogEvent.make("s", "m", "info", {"step": [1, 2]})
    assert pickle.loads(pickle.dumps(op)) == op  # noqa: S301 (our own bytes)
    assert copy.deepcopy(op) == op
    assert op.model_copy(update={"message": "n"}).message == "n"
    with pytest.raises(ValueError, match="frozen"):
        op.message = "changed"  # type: ignore[misc]


@settings(max_examples=300)
@given(data=_payloads)
def test_encode_json_copy_is_the_json_round_trip(data: Any) -> None:
    """encode_json's value is what its text decodes to, detached from the caller's object."""
    try:
        text, canonical = encode_json(data)
    except ValueError:
        return
    assert canonical == json.loads(text)
    if isinstance(data, dict) and data:
        data[next(iter(data))] = "changed by the caller"
        assert canonical == json.loads(text)


_stdlib_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


@settings(max_examples=300)
@given(value=json_values | _payloads)
def test_dump_json_writes_what_the_stdlib_encoder_writes(value: Any) -> None:
    """The prebuilt C encoder writes the stdlib's text, or raises the stdlib's error type."""
    try:
        expected = _stdlib_encode(value)
    except (TypeError, ValueError) as err:
        with pytest.raises(type(err)):
            dump_json(value)
        return
    assert dump_json(value) == expected


def test_dump_json_refuses_a_cycle_with_a_value_error() -> None:
    """A structure holding itself is a ValueError, as with the stdlib's circular check."""
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(ValueError, match="Circular"):
        dump_json(loop)


def test_dump_json_is_safe_to_share_between_threads() -> None:
    """Threads encoding the same object at once each get its text (no shared cycle markers)."""
    import threading

    shared = {"k": [list(range(50)) for _ in range(50)]}
    expected = _stdlib_encode(shared)
    start = threading.Barrier(4)
    bad: list[str] = []

    def encode_many() -> None:
        start.wait()
        for _ in range(300):
            if dump_json(shared) != expected:
                bad.append("wrong text")

    threads = [threading.Thread(target=encode_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


@pytest.mark.parametrize("spare", [-3000, -1500, -1000, -700, -450, -200, -50, 0, 50, 2000])
@pytest.mark.parametrize("message", ["\x01" * MAX_MESSAGE_CHARS, "m"])
def test_log_event_make_at_the_size_bound(message: str, spare: int) -> None:
    """An event whose line ends near MAX_OP_BYTES: made fast, it is the validated op or error.

    The fast constructor leaves an ASCII event's line to first use only when it surely fits; a
    message of control characters (6 bytes each in JSON) and payloads sized to end the line
    from 3000 bytes under the bound to 2000 over probe that estimate from both sides.
    """
    ts = time.time()
    probe = LogEvent(session_id="s", message=message, data="", op_id="0" * 32, ts=ts)
    data = "x" * (MAX_OP_BYTES - len(probe.line) + spare)  # the line is MAX_OP_BYTES + spare

    def validated(op_id: str, at: float) -> LogEvent:
        return LogEvent(op_id=op_id, ts=at, session_id="s", message=message, data=data)

    if spare > 20:  # over the bound by more than two time stamps' lengths can differ
        with pytest.raises(ValidationError, match="bytes, over"):
            LogEvent.make("s", message, "info", data)
        with pytest.raises(ValidationError, match="bytes, over"):
            validated("0" * 32, ts)
    elif spare < -20:
        made = LogEvent.make("s", message, "info", data)
        again = validated(made.op_id, made.ts)
        assert made.line == again.line
        assert made == again
        assert len(made.line) <= MAX_OP_BYTES
    else:  # at the bound (its time stamp's length decides): refused, or the validated op
        outcome: LogEvent | ValidationError
        try:
            outcome = LogEvent.make("s", message, "info", data)
        except ValidationError as err:
            outcome = err
        if isinstance(outcome, ValidationError):
            assert "bytes, over" in str(outcome)
        else:
            assert outcome.line == validated(outcome.op_id, outcome.ts).line
