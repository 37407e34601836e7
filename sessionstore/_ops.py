"""Every write as data: pydantic operation objects and the one function that applies them.

An op carries a client-generated ``op_id`` and timestamp ``ts``, so the same op can be applied
now, queued while the store closes, or journaled after it closed and applied by the next open,
with the same result. Applying an op twice is harmless:

* inserts are keyed by client-generated ids (``ON CONFLICT DO NOTHING``);
* status changes are last-writer-wins on ``ts`` (a stale op replayed late changes nothing);
* heartbeats keep the newest time; a child's end is recorded once.

An op is canonical from the moment it exists. Its construction validates every field and
encodes it once, with the same rules in every store state, into :attr:`_OpBase.line` (the
journal line) and :attr:`_OpBase.payload_json` (the JSON column). The database, the pending
queue, the journal and the rejected file all use those bytes; nothing re-encodes an op. The
rules (a ``ValueError`` at construction otherwise):

* JSON payloads (metadata, data, argv) nest at most :data:`MAX_JSON_DEPTH` containers deep;
  the depth is checked iteratively before anything recurses, so no input raises
  ``RecursionError``, and a journaled line (one level more) stays far inside the 200 levels
  pydantic's JSON parser accepts when the op is read back;
* object keys are unambiguous: an int, float, bool or None key becomes its JSON string at once
  (``{1: "a"}`` is ``{"1": "a"}`` in the op, as in the database), and keys that would become
  the same string (``{1: "a", "1": "b"}``, which would silently lose a value) are refused;
* every integer, in a payload or a field, fits SQLite's signed 64 bits;
* every string is valid UTF-8 (a lone surrogate, e.g. from a mis-decoded file name, is refused
  wherever it is: names, messages, keys, argv);
* the whole encoded op is at most :data:`MAX_OP_BYTES`.

``apply`` runs inside a write transaction the caller has opened (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from itertools import compress
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _json_str
from operator import not_
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast, get_args

import apsw
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

from . import _forkgate  # noqa: F401 - its fork hooks register first (_lifecycle.at_fork)
from . import _lifecycle as lifecycle
from ._identity import ProcessIdentity, hostname
from ._models import (
    Checkpoint,
    ChildProcess,
    ChildState,
    Event,
    EventLevel,
    Session,
    SessionStatus,
)
from ._prune import prune_rows
from .errors import InvalidTransitionError, SessionNotFoundError, StoreBusyError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_CHARS",
    "MAX_NAME_CHARS",
    "MAX_OP_BYTES",
    "SESSION_ID_CHARS",
    "AddChild",
    "Batch",
    "BatchDeadlineError",
    "CopySession",
    "CreateSession",
    "DeleteRuns",
    "DeleteSession",
    "Heartbeat",
    "LogEvent",
    "Op",
    "PopCheckpoint",
    "PruneCheckpoints",
    "PruneSessions",
    "PutCheckpoint",
    "PutWrites",
    "RemoveChild",
    "SaveCheckpoint",
    "SetOwner",
    "SetStatus",
    "apply",
    "apply_heartbeat",
    "checkpoint_row_id",
    "dump_json",
    "encode_json",
    "handler",
    "heartbeat_op",
    "heartbeat_plain",
    "new_id",
    "op_adapter",
    "op_from_line",
    "session_id_for_key",
]

MAX_NAME_CHARS = 200
MAX_MESSAGE_CHARS = 64 * 1024
MAX_JSON_DEPTH = 100
"""Containers a JSON payload may nest. Half of pydantic's parser limit (200), which the journal
line (the op object around the payload) must stay under when it is read back at replay."""
MAX_OP_BYTES = 16 * 1024 * 1024
"""The encoded op, payload included: one journal line, one row."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_SQLITE_CONSTRAINT_FOREIGNKEY = 787

_id_lock = threading.Lock()
_last_ms = 0
_seq = 0


class BatchDeadlineError(StoreBusyError):
    """A timed batch of ops stopped at its deadline, before one of its transactions.

    A ``StoreBusyError`` (the database could not take the whole batch in time), so callers
    that keep a batch on busy keep this one too; ``results`` says how far it got.
    """

    def __init__(self, path: str, results: list[Exception | None], total: int) -> None:
        self.path = path
        self.operation = "apply batch"
        self.waited_s = 0.0
        self.results = results
        Exception.__init__(
            self,
            f"apply batch on {path!r}: its deadline came after {len(results)} of {total} ops "
            "(each applied or rejected); the rest were not tried",
        )


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock at the fork; it does not exist in the child,
    # so the child's copy would stay locked forever and new_id() would hang.
    global _id_lock
    _id_lock = threading.Lock()


lifecycle.at_fork(__name__, "a new op-id lock in the child", after_in_child=_reset_after_fork)


def new_id() -> str:
    """Return a uuid7-style id: 48-bit millisecond time, then randomness; sortable by creation.

    Within one process, ids made in the same millisecond still sort in creation order (a
    12-bit sequence follows the time), so ``ORDER BY id`` is creation order.
    """
    global _last_ms, _seq
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next millisecond
                ms += 1
                _seq = 0
        else:
            _seq = os.urandom(1)[0]  # random start, leaving room to count up within this ms
        _last_ms = ms
        seq = _seq
    value = (
        (ms << 80)
        | (0x7 << 76)
        | (seq << 64)
        | (0b10 << 62)
        | (int.from_bytes(os.urandom(8), "big") >> 2)
    )
    return str(uuid.UUID(int=value))


# One encoder, made once: ``json.dumps`` with these options builds a new one per call, which
# cost as much as the encoding itself for a small payload. Stateless, so shared by threads.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder itself, built once with the options above. ``JSONEncoder.encode`` still builds
# one per call for a container (``iterencode``): 1.2-1.35 us for a {"step": 1} payload, against
# 0.25-0.85 us for the prebuilt one (3.10-3.13). It is built without a ``markers`` dict (that
# dict would be shared by every thread, and two threads encoding the same object would each
# take the other's entry for a cycle): a cycle recurses until ``RecursionError`` instead,
# turned into the ``ValueError`` the circular check would have raised. Payloads never get
# that far (``encode_json`` bounds their depth first). The output is the same text
# (tests/test_ops.py holds the two equal).
_chunks: Callable[[Any, int], Sequence[str]] | None = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(None, _unserialisable, _json_str, None, ":", ",", False, False, False)
)


def dump_json(value: Any) -> str:
    """Serialise ``value`` as strict JSON (no NaN/Infinity), compactly.

    Raises:
        ValueError: NaN or an infinity, or a structure that holds itself.
        TypeError: a value JSON has no form for.
    """
    if _chunks is None:  # pragma: no cover - CPython always has the C encoder
        return _encode(value)
    try:
        return "".join(_chunks(value, 0))
    except RecursionError as err:
        raise ValueError("Circular reference detected (or nested too deep)") from err


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
_INT_TYPE = frozenset({int})
_STR_ONLY = frozenset({str})


def _check_json(value: Any) -> bool:
    """Check ``value`` against the payload rules, level by level; True if it holds a container.

    Raises:
        ValueError: too deep, colliding keys, an int outside 64 bits, or not a JSON type.
    """
    # Level by level, not recursively: a 100,000-deep list is a ValueError, never a
    # RecursionError, and the walk stops at the first level past the bound. Plain scalars are
    # sorted out at C speed (map/compress, min/max for the int range), so Python code runs only
    # for containers and oddities: a per-node Python loop cost more than the encoding itself.
    level: list[Any] = [value]
    depth = 0
    while True:
        ints = list(compress(level, map(_INT_TYPE.__contains__, map(type, level))))
        if ints and (min(ints) < INT64_MIN or max(ints) > INT64_MAX):
            raise ValueError(f"integer {max(ints, key=abs)} does not fit SQLite's signed 64 bits")
        rest = list(compress(level, map(not_, map(_SCALAR_TYPES.__contains__, map(type, level)))))
        if not rest:
            return depth > 0
        found_container = False
        children: list[Any] = []
        for item in rest:
            if isinstance(item, dict):
                if not _STR_ONLY.issuperset(map(type, item)):
                    _check_keys(item)
                children.extend(item.values())
            elif isinstance(item, (list, tuple)):
                children.extend(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                if not INT64_MIN <= item <= INT64_MAX:  # an int subclass (IntEnum)
                    raise ValueError(f"integer {item} does not fit SQLite's signed 64 bits")
                continue
            elif isinstance(item, (str, float, bool)):
                continue  # subclasses (a str Enum): JSON writes their value
            else:
                raise ValueError(f"not JSON-serialisable: {type(item).__name__}")
            found_container = True
        if found_container:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        level = children


def _is_flat(value: Any) -> bool:
    """True for the usual payload: a dict of str keys to plain scalars, ints within 64 bits.

    Checked in one pass at C speed. Such a value needs no walk, and a shallow copy of it is
    exactly what a JSON round trip gives back. Anything else (an int out of range included,
    which the walk then names) answers False.
    """
    if type(value) is not dict or not _STR_ONLY.issuperset(map(type, value)):
        return False
    kinds = set(map(type, value.values()))
    if not kinds <= _SCALAR_TYPES:
        return False
    if int in kinds:  # a plain loop: cheaper than a generator for the few values usual here
        for v in value.values():
            if type(v) is int and not INT64_MIN <= v <= INT64_MAX:
                return False
    return True


def _key_text(key: Any) -> str:
    """The string JSON makes of a dict key, as ``json.dumps`` would write it."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float) and math.isfinite(key):
        return float.__repr__(key)
    raise ValueError(f"not a JSON object key: {type(key).__name__} {key!r}")


def _check_keys(mapping: dict[Any, Any]) -> None:
    """Refuse keys JSON cannot write, and keys that would become the same string.

    Raises:
        ValueError: ``{1: "a", "1": "b"}`` (one value would silently be lost), or a key that
            is not str, int, float, bool or None.
    """
    seen: dict[str, Any] = {}
    for key in mapping:
        text = _key_text(key)
        if text in seen:
            raise ValueError(
                f"keys {seen[text]!r} and {key!r} are both {text!r} in JSON: one would be lost"
            )
        seen[text] = key


def encode_json(value: Any) -> tuple[str, Any]:
    """Validate a JSON payload and encode it once.

    Returns:
        ``(text, canonical)``: the compact JSON text, and the value as JSON gives it back
        (a fresh copy for containers, so a caller mutating its object later changes nothing).

    Raises:
        ValueError: the value breaks a payload rule (see the module docstring).
    """
    if value is None:
        return "null", None  # the common case of an event without data
    flat = _is_flat(value)
    has_container = flat or _check_json(value)
    try:
        text = dump_json(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not JSON-serialisable: {err}") from err
    if flat:
        return text, dict(value)  # scalars only: the copy is what a JSON round trip gives
    return text, (json.loads(text) if has_container else value)


def _new_op_id() -> str:
    return os.urandom(16).hex()  # 128 random bits, as uuid4 but a few times cheaper


M = TypeVar("M", bound=BaseModel)
# The setters of the four slots every pydantic model instance has, taken from BaseModel once:
# calling a slot's setter directly skips the attribute look-up ``object.__setattr__`` does by
# name (0.4 against 0.65 us an instance, and the store assembles two per event).
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__


def assemble(
    cls: type[M],
    values: dict[str, Any],
    fields_set: set[str],
    private: dict[str, Any] | None = None,
) -> M:
    """A model instance from values that already obey its rules, without validating again.

    What ``model_construct`` does, minus its per-call field walk and its private-attribute and
    post-init machinery: 0.3 us against 2.2 us for ``model_construct`` and 1.2 us for plain
    validation (an ``Event``, measured), on the path every write takes. Only for values the
    caller has checked against the same rules (the fast op constructors below fall back to the
    validated constructor for anything they do not check themselves); ``values`` must hold every
    field, in field order.
    """
    model = cls.__new__(cls)
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, private)
    return model


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
SESSION_ID_CHARS = 64
SessionId = Annotated[str, Field(min_length=1, max_length=SESSION_ID_CHARS)]
Pid = Annotated[int, Field(gt=1, lt=2**31)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Text = Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]
Token = Annotated[str, Field(min_length=1, max_length=256)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Namespace = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
CheckpointKey = Annotated[str, Field(min_length=1, max_length=256)]


class _OpBase(BaseModel):
    # Validators are built at import, not on first use (pydantic's defer_build): deferred,
    # the build landed inside a write's deadline, and a hook bounded by --timeout 1.0 ran
    # 0.15-0.2 s longer and past its bound on a loaded machine (tests/cli/test_hooks.py).
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The field holding this kind's JSON payload (stored as JSON text), if any.
    PAYLOAD_FIELD: ClassVar[str | None] = None

    op_id: str = Field(default_factory=_new_op_id, min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time, allow_inf_nan=False)

    _line: bytes | None = PrivateAttr(default=b"")
    _payload_json: str | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        """Encode the op once (the journal line and the payload's JSON text).

        Runs for every construction, validated or not (``model_construct``), so every op in
        existence carries its bytes. A failure here is a ``ValidationError`` (a ``ValueError``).
        """
        fields = dict(self.__dict__)
        name = self.PAYLOAD_FIELD
        payload: str | None = None
        if name is not None:
            payload, canonical = encode_json(fields.pop(name))
            self.__dict__[name] = canonical  # frozen: set once, here, before anyone sees it
        for key, value in fields.items():
            if isinstance(value, enum.Enum):
                fields[key] = value.value
        head = dump_json(fields)
        # The payload's text is spliced in as-is: the journal carries the very bytes the
        # database stores, rather than a second encoding of the same value.
        text = head if payload is None else f'{head[:-1]},"{name}":{payload}}}'
        try:
            line = f"{text}\n".encode()
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{self.kind} op holds a string that is not valid UTF-8 "
                f"(a lone surrogate at {err.start} in its JSON)"
            ) from err
        if len(line) > MAX_OP_BYTES:
            raise ValueError(f"{self.kind} op encodes to {len(line)} bytes, over {MAX_OP_BYTES}")
        self._line = line
        self._payload_json = payload

    kind: str

    @property
    def line(self) -> bytes:
        """The op as one journal line (JSON, newline-terminated): its canonical bytes."""
        # Read from pydantic's store of private attributes directly: ``self._line`` goes
        # through BaseModel.__getattr__, about 6 us a read, and a close journaling a queue of
        # 40,000 ops read it 40,000 times past its deadline.
        private = cast("dict[str, Any]", self.__pydantic_private__)
        line: bytes | None = private["_line"]
        if line is None:  # a fast constructor left it for first use (Heartbeat.make)
            line = private["_line"] = self._late_line()
        return line

    def _late_line(self) -> bytes:
        """The line of an op built without one; only kinds whose fast constructor skips it."""
        raise TypeError(f"{self.kind} op has no line")  # pragma: no cover - never left out

    @property
    def payload_json(self) -> str | None:
        """The JSON text of the op's payload, exactly as the database stores it."""
        return self._payload_json


class CreateSession(_OpBase):
    """Create a session (ACTIVE) with a client-generated id."""

    PAYLOAD_FIELD: ClassVar[str | None] = "metadata"
    kind: Literal["create_session"] = "create_session"
    session_id: SessionId = Field(default_factory=new_id)
    name: Name
    objective: Text | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    owner_pid: Int64 | None = None
    owner_start_ticks: Int64 | None = None
    owner_boot_id: Token | None = None
    owner_host: Token | None = None
    key: Key | None = None  # a caller's key (thread id); session_id is then derived from it


class SetStatus(_OpBase):
    """Move a session to a new status (pause, resume, stop, complete, crash)."""

    kind: Literal["set_status"] = "set_status"
    session_id: SessionId
    status: SessionStatus


class Heartbeat(_OpBase):
    """Record that a session's owner is alive."""

    kind: Literal["heartbeat"] = "heartbeat"
    session_id: SessionId

    @classmethod
    def make(cls, session_id: str, ts: float | None = None) -> Heartbeat:
        """``Heartbeat(session_id=..., ts=...)``, built in about a tenth of the time.

        The same op, field for field and byte for byte (a property test holds the two paths
        equal): the plain case is checked and encoded here, and anything else (a wrong type, a
        bound crossed) goes to the validated constructor, which raises its usual error.

        Args:
            session_id: the session.
            ts: when the owner was seen alive (``time.time()``); now when None. The op of a
                heartbeat first tried without one (:func:`heartbeat_op`) carries its call's time.

        Raises:
            ValueError: what ``Heartbeat(session_id=..., ts=...)`` raises (a ``ValidationError``).
        """
        if heartbeat_plain(session_id) and ts is None:
            values = {
                "op_id": _new_op_id(),
                "ts": time.time(),
                "kind": "heartbeat",
                "session_id": session_id,
            }
            private = {"_line": None, "_payload_json": None}
            return assemble(cls, values, {"session_id"}, private)
        if ts is None:
            return cls(session_id=session_id)
        return cls(session_id=session_id, ts=ts)

    def _late_line(self) -> bytes:
        # Most heartbeats are applied at once and never journaled, so make() leaves the line
        # out (a fifth of its cost); these are the bytes the validated constructor encodes
        # (the property test holds the two paths equal).
        return (
            f'{{"op_id":"{self.op_id}","ts":{self.ts!r},"kind":"heartbeat",'
            f'"session_id":{_json_str(self.session_id)}}}\n'
        ).encode()


class SaveCheckpoint(_OpBase):
    """Store a named JSON snapshot of a session."""

    PAYLOAD_FIELD: ClassVar[str | None] = "data"
    kind: Literal["save_checkpoint"] = "save_checkpoint"
    checkpoint_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    session_id: SessionId
    name: Name
    data: Any


class LogEvent(_OpBase):
    """Append an event to a session's log."""

    PAYLOAD_FIELD: ClassVar[str | None] = "data"
    kind: Literal["log_event"] = "log_event"
    session_id: SessionId
    level: EventLevel = "info"
    message: Text
    data: Any = None

    @classmethod
    def make(cls, session_id: str, message: str, level: str = "info", data: Any = None) -> LogEvent:
        """``LogEvent(session_id=..., message=..., level=..., data=...)``, built fast.

        The same op, field for field and byte for byte, as :meth:`Heartbeat.make`; the payload
        is checked and encoded once by :func:`encode_json` either way. Anything this does not
        check itself goes to the validated constructor, which raises its usual error.

        Raises:
            ValueError: what the validated constructor raises (a ``ValidationError``).
        """
        if (
            type(session_id) is str
            and 0 < len(session_id) <= SESSION_ID_CHARS
            and type(message) is str
            and len(message) <= MAX_MESSAGE_CHARS
            and type(level) is str
            and level in _LEVELS
        ):
            try:
                payload, canonical = encode_json(data)
                op_id, ts = _new_op_id(), time.time()
                line: bytes | None = None
                if not (
                    session_id.isascii()  # O(1) in CPython: a flag of the string
                    and message.isascii()
                    and payload.isascii()
                    and len(payload) + 6 * len(message) <= _LATE_LINE_ROOM
                ):
                    # It might not encode, or not fit: find out now, at the boundary. (Most
                    # events are applied at once and never journaled, so an ASCII one that
                    # surely fits leaves its line to first use, as Heartbeat does.)
                    line = _event_line(op_id, ts, session_id, level, message, payload)
            except ValueError:  # UnicodeEncodeError included: the validated path says why
                pass
            else:
                if line is None or len(line) <= MAX_OP_BYTES:
                    values = {
                        "op_id": op_id,
                        "ts": ts,
                        "kind": "log_event",
                        "session_id": session_id,
                        "level": level,
                        "message": message,
                        "data": canonical,
                    }
                    private = {"_line": line, "_payload_json": payload}
                    return assemble(cls, values, set(_LOG_EVENT_SET), private)
        return cls(session_id=session_id, message=message, level=level, data=data)

    def _late_line(self) -> bytes:
        payload = self.__pydantic_private__["_payload_json"]  # type: ignore[index]
        return _event_line(self.op_id, self.ts, self.session_id, self.level, self.message, payload)


def _event_line(
    op_id: str, ts: float, session_id: str, level: str, message: str, payload: str
) -> bytes:
    """The bytes the validated ``LogEvent`` constructor encodes (a property test holds them)."""
    return (
        f'{{"op_id":"{op_id}","ts":{ts!r},"kind":"log_event",'
        f'"session_id":{_json_str(session_id)},"level":"{level}",'
        f'"message":{_json_str(message)},"data":{payload}}}\n'
    ).encode()


# An ASCII event's line is at most its payload, its message at 6 bytes a character (``\u001f``),
# a session id of 64 such characters and under 200 bytes of names, id, time and level: what is
# left of MAX_OP_BYTES for the payload and message once the rest has room (1 KiB, generously).
_LATE_LINE_ROOM = MAX_OP_BYTES - 1024
_LEVELS = frozenset(get_args(EventLevel))
_LOG_EVENT_SET = frozenset({"session_id", "message", "level", "data"})


class AddChild(_OpBase):
    """Record a child process of a session, with its identity."""

    PAYLOAD_FIELD: ClassVar[str | None] = "argv"
    kind: Literal["add_child"] = "add_child"
    session_id: SessionId
    pid: Pid
    start_ticks: Annotated[int, Field(ge=0, le=INT64_MAX)]
    boot_id: Token
    pgid: Int64 | None = None
    argv: list[str] = Field(default_factory=list)


class RemoveChild(_OpBase):
    """Record that a child ended, how (``state``), and its exit code. Recorded once."""

    kind: Literal["remove_child"] = "remove_child"
    session_id: SessionId
    pid: Pid
    start_ticks: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None  # None: newest running
    exit_code: Int64 | None = None
    state: Literal[ChildState.EXITED, ChildState.KILLED, ChildState.UNKILLABLE, ChildState.GONE] = (
        ChildState.EXITED
    )


def session_id_for_key(key: str) -> str:
    """The id of the session a caller's key names: the same in every process, for ever.

    Derived, not looked up, so that 16 processes asking for one new key at once all create the
    same row (``INSERT ... ON CONFLICT DO NOTHING``) and an op for a keyed session can be made,
    queued or journaled without reading the database. Rejected alternative: a random id plus a
    unique index on the key, which needs a read after the write to learn the winner's id.

    Raises:
        ValueError: not a str of 1..MAX_NAME_CHARS characters, or not valid UTF-8.
    """
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_NAME_CHARS:
        raise ValueError(f"a session key is a str of 1..{MAX_NAME_CHARS} characters")
    try:
        raw = key.encode()
    except UnicodeEncodeError as err:
        raise ValueError("a session key must be valid UTF-8 (no lone surrogates)") from err
    digest = hashlib.sha256(b"sessionstore.session-key\0" + raw).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def checkpoint_row_id(session_id: str, namespace: str, checkpoint_id: str) -> str:
    """The row id of a keyed checkpoint: one row per (session, namespace, checkpoint id)."""
    raw = dump_json([session_id, namespace, checkpoint_id]).encode()
    return "c" + hashlib.sha256(raw).hexdigest()[:40]


def _check_b64(value: str | None) -> str | None:
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"not base64: {err}") from err
    return value


class PutCheckpoint(_OpBase):
    """Insert or update a checkpoint keyed by (session, namespace, caller's checkpoint id).

    Last writer wins on ``ts``: an older put applied late (a journal replayed after newer
    writes) changes nothing. ``blob`` is the binary payload, base64 in the op and the journal,
    bytes in the database. A put older than a deletion of its session, run or checkpoint is
    skipped (see :class:`DeleteSession`).
    """

    PAYLOAD_FIELD: ClassVar[str | None] = "data"
    kind: Literal["put_checkpoint"] = "put_checkpoint"
    session_id: SessionId
    namespace: Namespace = ""
    checkpoint_id: CheckpointKey
    parent_id: CheckpointKey | None = None
    name: Name = "checkpoint"
    run_id: Token | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    blob: str | None = None
    data: Any = None

    _metadata_json: str = PrivateAttr(default="{}")

    def model_post_init(self, context: Any, /) -> None:
        """Check and encode the metadata (a second JSON payload) and the blob, then the op."""
        _check_b64(self.blob)
        text, canonical = encode_json(self.metadata)
        self.__dict__["metadata"] = canonical
        self._metadata_json = text
        super().model_post_init(context)

    @property
    def metadata_json(self) -> str:
        """The metadata's JSON text, as the database stores it."""
        return self._metadata_json

    @property
    def blob_bytes(self) -> bytes | None:
        """The binary payload, decoded."""
        return None if self.blob is None else base64.b64decode(self.blob)


class PutWrites(_OpBase):
    """Record writes attached to a checkpoint, one row per ``(task_id, idx)``.

    Idempotent on ``(task_id, idx)``: an existing row is kept, unless ``replace`` (a framework's
    special channels, such as an error or an interrupt, replace the previous value; last writer
    wins on ``ts``). Each write is ``{"idx": int, "channel": str, "type": str | None,
    "blob": base64 str | None}``.
    """

    PAYLOAD_FIELD: ClassVar[str | None] = "writes"
    kind: Literal["put_writes"] = "put_writes"
    session_id: SessionId
    namespace: Namespace = ""
    checkpoint_id: CheckpointKey
    task_id: Token
    task_path: Text = ""
    replace: bool = False
    writes: list[dict[str, Any]]

    def model_post_init(self, context: Any, /) -> None:
        """Check each write's shape, then encode the op."""
        for w in self.writes:
            if set(w) != {"idx", "channel", "type", "blob"}:
                raise ValueError("a write is {'idx', 'channel', 'type', 'blob'}")
            idx, channel, type_ = w["idx"], w["channel"], w["type"]
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise ValueError("a write's idx is an int")
            if not isinstance(channel, str) or not 0 < len(channel) <= MAX_NAME_CHARS:
                raise ValueError("a write's channel is a non-empty str")
            if type_ is not None and not isinstance(type_, str):
                raise ValueError("a write's type is a str or None")
            if w["blob"] is not None and not isinstance(w["blob"], str):
                raise ValueError("a write's blob is base64 text or None")
            _check_b64(w["blob"])
        super().model_post_init(context)


class DeleteSession(_OpBase):
    """Delete a session (a thread) and everything in it, as of the op's ``ts``.

    The ordering rule, shared by every deleting op: a deletion at time T removes only rows
    written at or before T, and leaves a tombstone at T; any op made before T that is applied
    after it (a journal replayed late) finds the tombstone and changes nothing. So a late
    delete never destroys newer rows, and a late write never resurrects deleted ones. The
    session row itself goes once nothing newer than T is left in it; a keyed session asked for
    again after T is created afresh.
    """

    kind: Literal["delete_session"] = "delete_session"
    session_id: SessionId


class PruneCheckpoints(_OpBase):
    """Keep the ``keep`` newest checkpoints per namespace (of those written by ``ts``).

    Newest is by checkpoint id (see :meth:`SessionStore.find_checkpoints`); the pruned ones
    and their writes are deleted and tombstoned. It acts on the rows present when it is
    applied: a put made before it but applied after it (a journal replayed late) is not pruned
    by it. Rejected alternative: a per-namespace id watermark, which still could not say which
    of the kept rows a late, newer-id put should have displaced.
    """

    kind: Literal["prune_checkpoints"] = "prune_checkpoints"
    session_id: SessionId
    keep: Annotated[int, Field(ge=0, le=INT64_MAX)]
    namespace: Namespace | None = None  # None: every namespace, each kept separately


class DeleteRuns(_OpBase):
    """Delete every checkpoint (and its writes) made by the given runs, as of ``ts``."""

    kind: Literal["delete_runs"] = "delete_runs"
    run_ids: Annotated[list[Token], Field(min_length=1, max_length=10_000)]


class CopySession(_OpBase):
    """Copy a session's checkpoints and their writes (written by ``ts``) into another session.

    Rows the target already has are kept as they are (never overwritten by the copy). Like a
    prune, it acts on the rows present when it is applied.
    """

    kind: Literal["copy_session"] = "copy_session"
    source_id: SessionId
    target_id: SessionId


class PopCheckpoint(_OpBase):
    """Delete and return the newest checkpoint of a namespace (of those written by ``ts``).

    One statement's worth of work inside one ``BEGIN IMMEDIATE``: two processes popping at
    once get two different checkpoints, never the same one twice. The popped checkpoint is
    tombstoned like any deleted one.
    """

    kind: Literal["pop_checkpoint"] = "pop_checkpoint"
    session_id: SessionId
    namespace: Namespace = ""


class SetOwner(_OpBase):
    """Record the process that owns a session now (an orchestrator taking it over), or none.

    Ordered with status changes: it applies only if no status change newer than it has
    landed, so it goes in one :class:`Batch` with the ``SetStatus`` that hands the session
    over (a resume), at the same ``ts``. All owner fields None clears the owner.
    """

    kind: Literal["set_owner"] = "set_owner"
    session_id: SessionId
    owner_pid: Int64 | None = None
    owner_start_ticks: Int64 | None = None
    owner_boot_id: Token | None = None
    owner_host: Token | None = None


class PruneSessions(_OpBase):
    """Delete sessions that ended before ``before``, with everything recorded in them.

    A session goes only when it ended (stopped, completed or crashed) and nothing in it
    (status, heartbeat, event, checkpoint, write, child) is newer than ``before``: an op
    acknowledged after the cutoff is never deleted by it, whenever the prune runs. At most
    ``limit`` sessions per op, so one op holds the write lock briefly (the caller repeats).
    Each pruned session is tombstoned at ``before``, so an older op replayed late does not
    resurrect it. Tombstones older than ``tombstones_before`` (when given) are dropped: the
    caller passes a time before which no op can still be applied (see ``_maintenance``).
    Its SQL is :func:`sessionstore._prune.prune_rows`.
    """

    kind: Literal["prune_sessions"] = "prune_sessions"
    before: float = Field(allow_inf_nan=False)
    limit: Annotated[int, Field(ge=1, le=100_000)] = 500
    tombstones_before: float | None = Field(default=None, allow_inf_nan=False)


_Member = Annotated[
    CreateSession
    | SetStatus
    | Heartbeat
    | SaveCheckpoint
    | LogEvent
    | AddChild
    | RemoveChild
    | PutCheckpoint
    | PutWrites
    | DeleteSession
    | PruneCheckpoints
    | DeleteRuns
    | CopySession
    | PopCheckpoint
    | SetOwner,
    Field(discriminator="kind"),
]


class Batch(_OpBase):
    """Several ops applied all or nothing, in order, in one transaction.

    One op in every sense: one entry in the pending queue while the store closes, one journal
    line after it closed, one savepoint when replayed. If any member fails (an unknown session,
    a refused transition) nothing of the batch is applied.
    """

    kind: Literal["batch"] = "batch"
    ops: Annotated[list[_Member], Field(min_length=1, max_length=10_000)]

    def model_post_init(self, context: Any, /) -> None:
        """The line is the members' own canonical lines inside one object: nothing re-encoded."""
        head = dump_json({"op_id": self.op_id, "ts": self.ts, "kind": self.kind})
        members = b",".join(op.line[:-1] for op in self.ops)
        line = head[:-1].encode() + b',"ops":[' + members + b"]}\n"
        if len(line) > MAX_OP_BYTES:
            raise ValueError(f"batch encodes to {len(line)} bytes, over {MAX_OP_BYTES}")
        self._line = line


Op = Annotated[
    CreateSession
    | SetStatus
    | Heartbeat
    | SaveCheckpoint
    | LogEvent
    | AddChild
    | RemoveChild
    | PutCheckpoint
    | PutWrites
    | DeleteSession
    | PruneCheckpoints
    | DeleteRuns
    | CopySession
    | PopCheckpoint
    | PruneSessions
    | SetOwner
    | Batch,
    Field(discriminator="kind"),
]
op_adapter: TypeAdapter[Op] = TypeAdapter(Op)


def op_from_line(line: bytes) -> Op:
    """Read an op back from its journal line, under the rules it was made with.

    Raises:
        ValueError: not an op, or an op that breaks a rule (a ``ValidationError``).
    """
    return op_adapter.validate_json(line)


# Which statuses each target status may be reached from. Resume is allowed from stopped and
# crashed so an operator can pick a session up again; nothing leaves COMPLETED but a stop.
_ALLOWED_FROM: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.ACTIVE: frozenset(
        {SessionStatus.ACTIVE, SessionStatus.PAUSED, SessionStatus.STOPPED, SessionStatus.CRASHED}
    ),
    SessionStatus.PAUSED: frozenset({SessionStatus.ACTIVE, SessionStatus.PAUSED}),
    SessionStatus.STOPPED: frozenset(SessionStatus),
    SessionStatus.COMPLETED: frozenset(
        {SessionStatus.ACTIVE, SessionStatus.PAUSED, SessionStatus.COMPLETED}
    ),
    SessionStatus.CRASHED: frozenset(
        {SessionStatus.ACTIVE, SessionStatus.PAUSED, SessionStatus.CRASHED}
    ),
}


def _is_fk_error(err: apsw.ConstraintError) -> bool:
    return getattr(err, "extendedresult", 0) == _SQLITE_CONSTRAINT_FOREIGNKEY


def _insert(conn: apsw.Connection, session_id: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """Run an INSERT into a table keyed to ``sessions``; an FK miss is an unknown session."""
    try:
        return conn.execute(sql, params).fetchall()
    except apsw.ConstraintError as err:
        if _is_fk_error(err):
            raise SessionNotFoundError(session_id) from err
        raise


def _require_session(conn: apsw.Connection, session_id: str) -> tuple[str, float]:
    row = conn.execute(
        "SELECT status, status_at FROM sessions WHERE id = ?", (session_id,)
    ).fetchall()
    if not row:
        raise SessionNotFoundError(session_id)
    status, status_at = row[0]
    return str(status), float(status_at)  # type: ignore[arg-type]


def _apply_create(conn: apsw.Connection, op: CreateSession) -> None:
    if _buried(conn, op.ts, ("session", op.session_id)):
        return  # made before the session was deleted: never resurrects it
    conn.execute(
        "INSERT INTO sessions (id, name, objective, status, metadata, owner_pid, "
        "owner_start_ticks, owner_boot_id, owner_host, created_at, updated_at, status_at, "
        "app_key) "
        "VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        (
            op.session_id,
            op.name,
            op.objective,
            op.payload_json,
            op.owner_pid,
            op.owner_start_ticks,
            op.owner_boot_id,
            op.owner_host,
            op.ts,
            op.ts,
            op.ts,
            op.key,
        ),
    ).fetchall()


def session_from_create(op: CreateSession) -> Session:
    """The Session a CreateSession op makes, without reading the database."""
    owner = None
    if op.owner_pid and op.owner_start_ticks is not None and op.owner_boot_id:
        owner = ProcessIdentity(
            pid=op.owner_pid, start_ticks=op.owner_start_ticks, boot_id=op.owner_boot_id
        )
    return Session(
        id=op.session_id,
        name=op.name,
        objective=op.objective,
        status=SessionStatus.ACTIVE,
        metadata=op.metadata,
        key=op.key,
        owner=owner,
        owner_host=op.owner_host,
        created_at=op.ts,
        updated_at=op.ts,
    )


_STATUS_COLUMN = {
    SessionStatus.PAUSED: "paused_at",
    SessionStatus.ACTIVE: "resumed_at",
    SessionStatus.STOPPED: "stopped_at",
    SessionStatus.COMPLETED: "stopped_at",
    SessionStatus.CRASHED: "stopped_at",
}


def _apply_status(conn: apsw.Connection, op: SetStatus) -> None:
    current, status_at = _require_session(conn, op.session_id)
    if op.ts < status_at:
        return  # a newer status change already landed: this stale op changes nothing
    if SessionStatus(current) not in _ALLOWED_FROM[op.status]:
        raise InvalidTransitionError(op.session_id, current, op.status.value)
    column = _STATUS_COLUMN[op.status]
    conn.execute(
        f"UPDATE sessions SET status = ?, status_at = ?, {column} = ?, "
        "updated_at = max(updated_at, ?) WHERE id = ?",
        (op.status.value, op.ts, op.ts, op.ts, op.session_id),
    ).fetchall()


def heartbeat_plain(session_id: object) -> bool:
    """True for a session id a heartbeat takes as it is: no op needs to check or encode it.

    A str within the bound, ASCII (so its op's journal line can be written later, see
    :meth:`Heartbeat._late_line`). Anything else goes through the validated constructor.
    """
    return (
        type(session_id) is str and 0 < len(session_id) <= SESSION_ID_CHARS and session_id.isascii()
    )


def apply_heartbeat(conn: apsw.Connection, call: tuple[str, float]) -> None:
    """A heartbeat's SQL for ``(session_id, ts)``, inside the caller's write transaction.

    What applying a :class:`Heartbeat` op runs, callable without one: a heartbeat applied at
    once needs no op (it stores no op id; ``max()`` makes a replay harmless), so the store
    builds its op only when the write must be kept (queued, journaled). See
    ``WriteRouter.write_call``.

    Raises:
        SessionNotFoundError: no such session; nothing changed.
        apsw.Error: from SQLite.
    """
    session_id, ts = call
    conn.execute(
        "UPDATE sessions SET heartbeat_at = max(coalesce(heartbeat_at, 0), ?), "
        "updated_at = max(updated_at, ?) WHERE id = ?",
        (ts, ts, session_id),
    )
    if conn.changes() == 0:
        raise SessionNotFoundError(session_id)


def heartbeat_op(call: tuple[str, float]) -> Heartbeat:
    """The op :func:`apply_heartbeat` applies for ``(session_id, ts)``.

    Raises:
        ValueError: what ``Heartbeat(session_id=..., ts=...)`` raises.
    """
    return Heartbeat.make(call[0], call[1])


def _apply_heartbeat(conn: apsw.Connection, op: Heartbeat) -> None:
    apply_heartbeat(conn, (op.session_id, op.ts))


def _apply_checkpoint(conn: apsw.Connection, op: SaveCheckpoint) -> None:
    if _buried(conn, op.ts, ("session", op.session_id)):
        return
    _insert(
        conn,
        op.session_id,
        "INSERT INTO checkpoints (id, session_id, name, data, created_at, checkpoint_id, "
        "written_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        (op.checkpoint_id, op.session_id, op.name, op.payload_json, op.ts, op.checkpoint_id, op.ts),
    )


def checkpoint_from_op(op: SaveCheckpoint) -> Checkpoint:
    """The Checkpoint a SaveCheckpoint op makes, without reading the database."""
    return Checkpoint(
        id=op.checkpoint_id, session_id=op.session_id, name=op.name, data=op.data, created_at=op.ts
    )


_TOMBSTONE_SQL = "SELECT deleted_at FROM tombstones WHERE scope = ? AND key = ?"
_EVENT_SQL = (
    "INSERT INTO events (op_id, session_id, level, message, data, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(op_id) DO NOTHING RETURNING id"
)


def _apply_event(conn: apsw.Connection, op: LogEvent) -> int | None:
    # The most frequent write, so written out flat (the statements _buried and _insert run,
    # without their calls): every Python step here is time the database write lock is held.
    sid, ts = op.session_id, op.ts
    tomb = conn.execute(_TOMBSTONE_SQL, ("session", sid)).fetchall()
    if tomb and float(tomb[0][0]) >= ts:  # type: ignore[arg-type]
        return None  # made before its session was deleted
    data = op.data
    payload = None if data is None else op.__pydantic_private__["_payload_json"]  # type: ignore[index]
    try:
        rows = conn.execute(
            _EVENT_SQL, (op.op_id, sid, op.level, op.message, payload, ts)
        ).fetchall()
    except apsw.ConstraintError as err:
        if _is_fk_error(err):
            raise SessionNotFoundError(sid) from err
        raise
    if rows:
        return int(rows[0][0])  # type: ignore[arg-type]
    # Applied before (replay): find the row it made.
    found = conn.execute("SELECT id FROM events WHERE op_id = ?", (op.op_id,)).fetchall()
    return int(found[0][0])  # type: ignore[arg-type]


def event_from_op(op: LogEvent, event_id: int | None) -> Event:
    """The Event a LogEvent op makes; ``event_id`` None while it is not applied yet."""
    # Every value comes from an op that obeys the rules: assembled, not validated again.
    values = {
        "id": event_id,
        "op_id": op.op_id,
        "session_id": op.session_id,
        "level": op.level,
        "message": op.message,
        "data": op.data,
        "created_at": op.ts,
    }
    return assemble(Event, values, set(_EVENT_FIELDS))


_EVENT_FIELDS = frozenset(Event.model_fields)


def _apply_add_child(conn: apsw.Connection, op: AddChild) -> None:
    _insert(
        conn,
        op.session_id,
        "INSERT INTO child_processes (session_id, pid, start_ticks, boot_id, pgid, argv, "
        "registered_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'running') "
        "ON CONFLICT(session_id, pid, start_ticks, boot_id) DO NOTHING",
        (op.session_id, op.pid, op.start_ticks, op.boot_id, op.pgid, op.payload_json, op.ts),
    )


def child_from_op(op: AddChild) -> ChildProcess:
    """The ChildProcess an AddChild op records, without reading the database."""
    return ChildProcess(
        session_id=op.session_id,
        pid=op.pid,
        start_ticks=op.start_ticks,
        boot_id=op.boot_id,
        pgid=op.pgid,
        argv=op.argv,
        registered_at=op.ts,
    )


def _apply_remove_child(conn: apsw.Connection, op: RemoveChild) -> bool:
    # The end is recorded once; only "unkillable" may later be corrected to a final state.
    params: tuple[Any, ...]
    # Only rows registered before the op was made: replaying an old end after a newer
    # registration of the same pid must not end the newer one.
    where = (
        "session_id = ? AND pid = ? AND state IN ('running', 'unkillable') AND registered_at <= ?"
    )
    params = (op.session_id, op.pid, op.ts)
    if op.start_ticks is not None:
        where += " AND start_ticks = ?"
        params += (op.start_ticks,)
    conn.execute(
        "UPDATE child_processes SET state = ?, exit_code = coalesce(?, exit_code), "
        "exited_at = CASE WHEN ? = 'unkillable' THEN exited_at ELSE coalesce(exited_at, ?) END "
        f"WHERE rowid = (SELECT rowid FROM child_processes WHERE {where} "
        "ORDER BY registered_at DESC LIMIT 1)",
        (op.state.value, op.exit_code, op.state.value, op.ts, *params),
    ).fetchall()
    if conn.changes():
        return True
    _require_session(conn, op.session_id)
    return False  # unknown child or already ended: idempotent no-op


def _deleted_at(conn: apsw.Connection, scope: str, key: str) -> float | None:
    rows = conn.execute(
        "SELECT deleted_at FROM tombstones WHERE scope = ? AND key = ?", (scope, key)
    ).fetchall()
    return float(rows[0][0]) if rows else None  # type: ignore[arg-type]


def _buried(conn: apsw.Connection, ts: float, *targets: tuple[str, str | None]) -> bool:
    """True if any target was deleted at or after ``ts`` (the op predates the deletion)."""
    for scope, key in targets:
        if key is None:
            continue
        at = _deleted_at(conn, scope, key)
        if at is not None and at >= ts:
            return True
    return False


def _bury(conn: apsw.Connection, scope: str, key: str, ts: float) -> None:
    conn.execute(
        "INSERT INTO tombstones (scope, key, deleted_at) VALUES (?, ?, ?) "
        "ON CONFLICT(scope, key) DO UPDATE SET deleted_at = max(deleted_at, excluded.deleted_at)",
        (scope, key, ts),
    ).fetchall()


def _checkpoint_key(session_id: str, namespace: str, checkpoint_id: str) -> str:
    return dump_json([session_id, namespace, checkpoint_id])


def _apply_put_checkpoint(conn: apsw.Connection, op: PutCheckpoint) -> None:
    key = _checkpoint_key(op.session_id, op.namespace, op.checkpoint_id)
    if _buried(conn, op.ts, ("session", op.session_id), ("run", op.run_id), ("checkpoint", key)):
        return
    _insert(
        conn,
        op.session_id,
        "INSERT INTO checkpoints (id, session_id, name, data, created_at, namespace, "
        "checkpoint_id, parent_id, metadata, blob, run_id, written_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
        "name = excluded.name, data = excluded.data, parent_id = excluded.parent_id, "
        "metadata = excluded.metadata, blob = excluded.blob, run_id = excluded.run_id, "
        "written_at = excluded.written_at WHERE excluded.written_at >= checkpoints.written_at",
        (
            checkpoint_row_id(op.session_id, op.namespace, op.checkpoint_id),
            op.session_id,
            op.name,
            op.payload_json,
            op.ts,
            op.namespace,
            op.checkpoint_id,
            op.parent_id,
            op.metadata_json,
            op.blob_bytes,
            op.run_id,
            op.ts,
        ),
    )


def _apply_put_writes(conn: apsw.Connection, op: PutWrites) -> None:
    key = _checkpoint_key(op.session_id, op.namespace, op.checkpoint_id)
    if _buried(conn, op.ts, ("session", op.session_id), ("checkpoint", key)):
        return
    # Replace: last writer wins on ts. Otherwise the first write of (task_id, idx) stays.
    conflict = (
        "DO UPDATE SET channel = excluded.channel, type = excluded.type, blob = excluded.blob, "
        "task_path = excluded.task_path, written_at = excluded.written_at "
        "WHERE excluded.written_at >= checkpoint_writes.written_at"
        if op.replace
        else "DO NOTHING"
    )
    sql = (
        "INSERT INTO checkpoint_writes (session_id, namespace, checkpoint_id, task_id, idx, "
        "channel, type, blob, task_path, written_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        f"ON CONFLICT(session_id, namespace, checkpoint_id, task_id, idx) {conflict}"
    )
    for w in op.writes:
        blob = None if w["blob"] is None else base64.b64decode(w["blob"])
        _insert(
            conn,
            op.session_id,
            sql,
            (
                op.session_id,
                op.namespace,
                op.checkpoint_id,
                op.task_id,
                w["idx"],
                w["channel"],
                w["type"],
                blob,
                op.task_path,
                op.ts,
            ),
        )


def _delete_checkpoint_rows(
    conn: apsw.Connection, rows: list[tuple[str, str, str]], ts: float
) -> None:
    """Delete checkpoints (session, namespace, checkpoint id), their writes, and bury them."""
    for session_id, namespace, checkpoint_id in rows:
        conn.execute(
            "DELETE FROM checkpoints WHERE session_id = ? AND namespace = ? "
            "AND checkpoint_id = ? AND written_at <= ?",
            (session_id, namespace, checkpoint_id, ts),
        ).fetchall()
        conn.execute(
            "DELETE FROM checkpoint_writes WHERE session_id = ? AND namespace = ? "
            "AND checkpoint_id = ? AND written_at <= ?",
            (session_id, namespace, checkpoint_id, ts),
        ).fetchall()
        _bury(conn, "checkpoint", _checkpoint_key(session_id, namespace, checkpoint_id), ts)


def _apply_delete_session(conn: apsw.Connection, op: DeleteSession) -> None:
    sid, ts = op.session_id, op.ts
    _bury(conn, "session", sid, ts)
    for sql in (
        "DELETE FROM checkpoint_writes WHERE session_id = ? AND written_at <= ?",
        "DELETE FROM checkpoints WHERE session_id = ? AND coalesce(written_at, created_at) <= ?",
        "DELETE FROM events WHERE session_id = ? AND created_at <= ?",
        "DELETE FROM child_processes WHERE session_id = ? AND registered_at <= ?",
    ):
        conn.execute(sql, (sid, ts)).fetchall()
    # The row goes once nothing newer than the deletion is left in it.
    conn.execute(
        "DELETE FROM sessions WHERE id = ?1 AND created_at <= ?2 "
        "AND NOT EXISTS (SELECT 1 FROM checkpoints WHERE session_id = ?1) "
        "AND NOT EXISTS (SELECT 1 FROM checkpoint_writes WHERE session_id = ?1) "
        "AND NOT EXISTS (SELECT 1 FROM events WHERE session_id = ?1) "
        "AND NOT EXISTS (SELECT 1 FROM child_processes WHERE session_id = ?1)",
        (sid, ts),
    ).fetchall()


def _apply_prune(conn: apsw.Connection, op: PruneCheckpoints) -> None:
    where = "session_id = ? AND written_at <= ?"
    params: tuple[Any, ...] = (op.session_id, op.ts)
    if op.namespace is not None:
        where += " AND namespace = ?"
        params += (op.namespace,)
    rows = conn.execute(
        f"SELECT namespace, checkpoint_id FROM checkpoints WHERE {where} "
        "ORDER BY namespace, checkpoint_id DESC",
        params,
    ).fetchall()
    doomed: list[tuple[str, str, str]] = []
    kept: dict[str, int] = {}
    for namespace, checkpoint_id in rows:
        ns = str(namespace)
        n = kept.get(ns, 0)
        if n < op.keep:
            kept[ns] = n + 1
        else:
            doomed.append((op.session_id, ns, str(checkpoint_id)))
    _delete_checkpoint_rows(conn, doomed, op.ts)


def _apply_delete_runs(conn: apsw.Connection, op: DeleteRuns) -> None:
    for run_id in op.run_ids:
        _bury(conn, "run", run_id, op.ts)
        rows = conn.execute(
            "SELECT session_id, namespace, checkpoint_id FROM checkpoints "
            "WHERE run_id = ? AND written_at <= ?",
            (run_id, op.ts),
        ).fetchall()
        _delete_checkpoint_rows(conn, [(str(a), str(b), str(c)) for a, b, c in rows], op.ts)


def _apply_copy(conn: apsw.Connection, op: CopySession) -> None:
    if _buried(conn, op.ts, ("session", op.target_id)):
        return
    _require_session(conn, op.target_id)
    rows = conn.execute(
        "SELECT namespace, checkpoint_id, name, data, created_at, parent_id, metadata, blob, "
        "run_id FROM checkpoints WHERE session_id = ? AND written_at <= ?",
        (op.source_id, op.ts),
    ).fetchall()
    for ns, cid, name, data, created_at, parent_id, metadata, blob, run_id in rows:
        key = _checkpoint_key(op.target_id, str(ns), str(cid))
        if _buried(conn, op.ts, ("checkpoint", key)):
            continue
        conn.execute(
            "INSERT INTO checkpoints (id, session_id, name, data, created_at, namespace, "
            "checkpoint_id, parent_id, metadata, blob, run_id, written_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                checkpoint_row_id(op.target_id, str(ns), str(cid)),
                op.target_id,
                name,
                data,
                created_at,
                ns,
                cid,
                parent_id,
                metadata,
                blob,
                run_id,
                op.ts,
            ),
        ).fetchall()
    conn.execute(
        "INSERT INTO checkpoint_writes (session_id, namespace, checkpoint_id, task_id, idx, "
        "channel, type, blob, task_path, written_at) "
        "SELECT ?, namespace, checkpoint_id, task_id, idx, channel, type, blob, task_path, ? "
        "FROM checkpoint_writes WHERE session_id = ? AND written_at <= ? "
        "AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.session_id = ? "
        "AND c.namespace = checkpoint_writes.namespace "
        "AND c.checkpoint_id = checkpoint_writes.checkpoint_id) "
        "ORDER BY rowid ON CONFLICT DO NOTHING",
        (op.target_id, op.ts, op.source_id, op.ts, op.target_id),
    ).fetchall()


def _apply_pop(conn: apsw.Connection, op: PopCheckpoint) -> tuple[str, str, str] | None:
    """Returns ``(checkpoint id, name, data JSON)`` of the popped checkpoint, or None."""
    rows = conn.execute(
        "SELECT checkpoint_id, name, data FROM checkpoints WHERE session_id = ? AND namespace = ? "
        "AND written_at <= ? ORDER BY checkpoint_id DESC LIMIT 1",
        (op.session_id, op.namespace, op.ts),
    ).fetchall()
    if not rows:
        return None
    checkpoint_id, name, data = (str(v) for v in rows[0])
    _delete_checkpoint_rows(conn, [(op.session_id, op.namespace, checkpoint_id)], op.ts)
    return checkpoint_id, name, data


def _apply_owner(conn: apsw.Connection, op: SetOwner) -> None:
    _, status_at = _require_session(conn, op.session_id)
    if op.ts < status_at:
        return  # the session changed hands (or status) after this op was made
    conn.execute(
        "UPDATE sessions SET owner_pid = ?, owner_start_ticks = ?, owner_boot_id = ?, "
        "owner_host = ?, updated_at = max(updated_at, ?) WHERE id = ?",
        (
            op.owner_pid,
            op.owner_start_ticks,
            op.owner_boot_id,
            op.owner_host,
            op.ts,
            op.session_id,
        ),
    ).fetchall()


def _prune_sessions(conn: apsw.Connection, op: PruneSessions) -> tuple[int, int]:
    return prune_rows(conn, op.before, op.limit, op.tombstones_before)


def _apply_batch(conn: apsw.Connection, op: Batch) -> list[Any]:
    # Any member's error propagates: the caller's transaction (or savepoint) rolls back all.
    return [apply(member, conn) for member in op.ops]


_APPLY: dict[type[Any], Callable[[apsw.Connection, Any], Any]] = {
    LogEvent: _apply_event,
    Heartbeat: _apply_heartbeat,
    SaveCheckpoint: _apply_checkpoint,
    SetStatus: _apply_status,
    CreateSession: _apply_create,
    AddChild: _apply_add_child,
    RemoveChild: _apply_remove_child,
    PutCheckpoint: _apply_put_checkpoint,
    PutWrites: _apply_put_writes,
    DeleteSession: _apply_delete_session,
    PruneCheckpoints: _apply_prune,
    DeleteRuns: _apply_delete_runs,
    CopySession: _apply_copy,
    PopCheckpoint: _apply_pop,
    PruneSessions: _prune_sessions,
    SetOwner: _apply_owner,
    Batch: _apply_batch,
}


def apply(op: Op, conn: apsw.Connection) -> Any:
    """Apply one op inside the caller's open write transaction.

    Args:
        op: the operation.
        conn: a connection with a write transaction open (``BEGIN IMMEDIATE``).

    Returns:
        The new event's id for LogEvent, whether a row changed for RemoveChild, else None.
        Models are built by the caller from the op, after COMMIT, so the write lock is held
        for SQL only.

    Raises:
        SessionNotFoundError: the op names a session that does not exist.
        InvalidTransitionError: a status change the current status does not allow.
        apsw.Error: from SQLite; the caller decides on retry or journaling.
    """
    return handler(op)(conn, op)


def handler(op: Op) -> Callable[[apsw.Connection, Any], Any]:
    """The function that applies ``op``: ``handler(op)(conn, op)`` is ``apply(op, conn)``.

    Raises:
        TypeError: ``op`` is not an op.
    """
    try:
        return _APPLY[type(op)]
    except KeyError:
        pass
    raise TypeError(f"not an op: {type(op).__name__}")


@functools.lru_cache(maxsize=4)
def _current_identity(pid: int) -> ProcessIdentity:
    # Keyed by pid so a forked child captures its own identity, not its parent's.
    return ProcessIdentity.capture(pid)


def owner_fields() -> dict[str, Any]:
    """The owner identity columns for a session created by this process."""
    ident = _current_identity(os.getpid())
    return {
        "owner_pid": ident.pid,
        "owner_start_ticks": ident.start_ticks,
        "owner_boot_id": ident.boot_id,
        "owner_host": hostname(),
    }
