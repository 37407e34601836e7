"""``export`` and ``import``: one session as one JSON document, and back, idempotently.

Import writes through the store's op types with the ids from the document (the session id,
checkpoint ids, event op ids, child identities), so every row it makes is keyed exactly as in
the source and applying the same document again changes nothing. It reads what the target already
holds first and only sends the ops still missing, so a re-import does not even open a write
transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from .. import _queries
from .._export import (
    ExportExtras,
    KeyedCheckpoint,
    PendingWrite,
    Tombstone,
    extras_ops,
    read_extras,
)
from .._export import not_stored as keyed_not_stored
from .._models import Checkpoint, ChildProcess, ChildState, Event, Session, SessionStatus
from .._ops import (
    AddChild,
    CreateSession,
    Heartbeat,
    LogEvent,
    Op,
    RemoveChild,
    SaveCheckpoint,
    SetStatus,
)
from .._store import SessionStore
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Output,
    dump,
    one_line,
    open_store,
    resolve_db,
)
from ._session import resolve_session

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "ExportDocument", "cmd_export", "cmd_import"]

EXPORT_FORMAT = "sessionstore.export"
EXPORT_VERSION = 2  # 2 adds the session key, keyed checkpoints, writes, tombstones
_PAGE = 10_000


class ExportDocument(BaseModel):
    """The export file: one session with its checkpoints, events and child rows."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["sessionstore.export"]
    version: Literal[1, 2]
    exported_at: float
    session: Session
    checkpoints: list[Checkpoint]  # named checkpoints (save_checkpoint)
    events: list[Event]
    children: list[ChildProcess]
    # Version 2 (absent from a version 1 document, which imports as before):
    app_key: str | None = None
    keyed_checkpoints: list[KeyedCheckpoint] = []
    writes: list[PendingWrite] = []
    tombstones: list[Tombstone] = []

    @property
    def extras(self) -> ExportExtras:
        """The version 2 part, as :mod:`sessionstore._export` reads and plans it."""
        return ExportExtras(
            app_key=self.app_key,
            keyed_checkpoints=self.keyed_checkpoints,
            writes=self.writes,
            tombstones=self.tombstones,
        )


def export_document(store: SessionStore, session_id: str) -> ExportDocument:
    """Read one session and everything recorded for it.

    Raises:
        SessionNotFoundError: no such session.
    """
    session = store.get_session(session_id)
    events: list[Event] = []
    after: int | None = None
    while True:  # page by id so a long log is not one giant query result
        page = store.events(session_id, after_id=after, limit=_PAGE)
        events.extend(page)
        if len(page) < _PAGE:
            break
        after = page[-1].id
    extras, keyed_rows = read_extras(store, session_id)
    return ExportDocument(
        format=EXPORT_FORMAT,
        version=EXPORT_VERSION,
        exported_at=time.time(),
        session=session,
        checkpoints=[c for c in store.list_checkpoints(session_id) if c.id not in keyed_rows],
        events=events,
        children=store.children(session_id, include_exited=True),
        app_key=extras.app_key,
        keyed_checkpoints=extras.keyed_checkpoints,
        writes=extras.writes,
        tombstones=extras.tombstones,
    )


def _write_atomically(path: str, text: str) -> None:
    # Temp file + rename: an interrupted export never leaves half a document under the name.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sessionstore-export-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    """``export SESSION [-o FILE]``: the export document on stdout or into FILE."""
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        doc = export_document(store, resolve_session(store, args.session).id)
    text = json.dumps(doc.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    try:
        _write_atomically(args.output, text)
    except OSError as err:
        raise CliError(f"cannot write {args.output}: {err.strerror or err}") from err
    summary = {
        "path": args.output,
        "session_id": doc.session.id,
        "checkpoints": len(doc.checkpoints),
        "events": len(doc.events),
        "children": len(doc.children),
    }

    def human(con: Console) -> None:
        con.print(
            f"exported session {doc.session.id} ({doc.session.name}): "
            f"{summary['checkpoints']} checkpoint(s), {summary['events']} event(s), "
            f"{summary['children']} child row(s) -> {args.output}",
            markup=False,  # names and paths are data, never markup
        )

    out.result(summary, human)
    return EXIT_OK


def read_document(path: str) -> ExportDocument:
    """Read and validate an export file (``-`` for stdin).

    Raises:
        CliError: unreadable, not JSON, not an export document, or inconsistent (exit 2).
    """
    try:
        if path == "-":
            raw = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                raw = f.read()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}", EXIT_USAGE) from err
    except UnicodeDecodeError as err:
        raise CliError(f"{path} is not UTF-8 text: {err}", EXIT_USAGE) from err
    try:
        doc = ExportDocument.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise CliError(
            f"{path} is not a sessionstore export (at {where}: {one_line(first['msg'])}; "
            f"{err.error_count()} error(s))",
            EXIT_USAGE,
        ) from err
    sid = doc.session.id
    owners = [
        *(c.session_id for c in doc.checkpoints),
        *(e.session_id for e in doc.events),
        *(c.session_id for c in doc.children),
    ]
    strays = [owner for owner in owners if owner != sid]
    if strays:
        raise CliError(
            f"{path}: {len(strays)} row(s) belong to another session than {sid}", EXIT_USAGE
        )
    _check_timestamps(path, doc)
    return doc


# 9999-12-31T23:59:59Z: the last instant every reader (time.localtime, RFC 3339) can print.
# One 1e308 accepted here once broke `sessions` for the whole database.
_MAX_TS = 253_402_300_799.0


def _check_timestamps(path: str, doc: ExportDocument) -> None:
    rows: list[tuple[str, BaseModel]] = [("session", doc.session)]
    rows += [(f"checkpoints[{i}]", c) for i, c in enumerate(doc.checkpoints)]
    rows += [(f"events[{i}]", e) for i, e in enumerate(doc.events)]
    rows += [(f"children[{i}]", c) for i, c in enumerate(doc.children)]
    rows += [(f"keyed_checkpoints[{i}]", c) for i, c in enumerate(doc.keyed_checkpoints)]
    rows += [(f"writes[{i}]", w) for i, w in enumerate(doc.writes)]
    rows += [(f"tombstones[{i}]", t) for i, t in enumerate(doc.tombstones)]
    for where, row in rows:
        for key, value in row.model_dump().items():
            # `not 0 <= v <= max` also refuses nan and inf.
            if key.endswith("_at") and isinstance(value, int | float) and not 0 <= value <= _MAX_TS:
                raise CliError(
                    f"{path}: {where}.{key} = {value!r} is not a time between 1970 and 9999",
                    EXIT_USAGE,
                )


def _status_ts(s: Session) -> float:
    ts = s.paused_at if s.status is SessionStatus.PAUSED else s.stopped_at
    return max(ts if ts is not None else s.updated_at, s.created_at)


def _not_stored(
    store: SessionStore, session_id: str, ops: list[Op], errors: list[Exception | None]
) -> list[tuple[str, str]]:
    """Applied checkpoint and event ops whose rows are not in the session afterwards."""
    applied = [op for op, err in zip(ops, errors, strict=True) if err is None]
    want_cp = {op.checkpoint_id for op in applied if isinstance(op, SaveCheckpoint)}
    want_ev = {op.op_id for op in applied if isinstance(op, LogEvent)}
    have_cp = {c.id for c in store.list_checkpoints(session_id)} if want_cp else set()
    have_ev: set[str] = set()
    after: int | None = None
    while want_ev:
        page = store.events(session_id, after_id=after, limit=_PAGE)
        have_ev.update(e.op_id for e in page)
        if len(page) < _PAGE:
            break
        after = page[-1].id
    return [("checkpoint", i) for i in sorted(want_cp - have_cp)] + [
        ("event", i) for i in sorted(want_ev - have_ev)
    ]


def plan_import(store: SessionStore, doc: ExportDocument) -> tuple[list[Op], dict[str, Any]]:
    """The ops that bring ``doc`` into the store, and what they amount to.

    Only what the target lacks is planned. A session the target already has keeps its status:
    the import adds history, it does not override what happened here since.

    Raises:
        ValueError: a row the op types refuse (e.g. a child pid <= 1).
    """
    s = doc.session
    with store.lease("cli import plan") as lease:
        found = _queries.get_session(lease, s.id)
        have_checkpoints = _queries.checkpoint_ids(lease, s.id)
        have_events = _queries.event_op_ids(lease, s.id)
        have_children = _queries.child_states(lease, s.id)
    ops: list[Op] = []
    created = found is None
    if created:
        ops.append(
            CreateSession(
                ts=s.created_at,
                session_id=s.id,
                name=s.name,
                objective=s.objective,
                metadata=s.metadata,
                owner_pid=s.owner.pid if s.owner else None,
                owner_start_ticks=s.owner.start_ticks if s.owner else None,
                owner_boot_id=s.owner.boot_id if s.owner else None,
                owner_host=s.owner_host,
                key=doc.app_key,
            )
        )
        if s.status is not SessionStatus.ACTIVE:
            ops.append(SetStatus(ts=_status_ts(s), session_id=s.id, status=s.status))
    target_hb = None if found is None else found.heartbeat_at
    if s.heartbeat_at is not None and (target_hb is None or target_hb < s.heartbeat_at):
        ops.append(Heartbeat(ts=s.heartbeat_at, session_id=s.id))
    new_checkpoints = [c for c in doc.checkpoints if c.id not in have_checkpoints]
    ops.extend(
        SaveCheckpoint(
            ts=c.created_at, checkpoint_id=c.id, session_id=s.id, name=c.name, data=c.data
        )
        for c in new_checkpoints
    )
    new_events = [e for e in doc.events if e.op_id not in have_events]
    ops.extend(
        LogEvent(
            op_id=e.op_id,
            ts=e.created_at,
            session_id=s.id,
            level=e.level,
            message=e.message,
            data=e.data,
        )
        for e in sorted(new_events, key=lambda e: (e.id or 0, e.created_at))
    )
    added = updated = 0
    for c in doc.children:
        key = (c.pid, c.start_ticks, c.boot_id)
        state_here = have_children.get(key)
        if state_here is None:
            added += 1
            ops.append(
                AddChild(
                    ts=c.registered_at,
                    session_id=s.id,
                    pid=c.pid,
                    start_ticks=c.start_ticks,
                    boot_id=c.boot_id,
                    pgid=c.pgid,
                    argv=c.argv,
                )
            )
        ended = c.state is not ChildState.RUNNING
        if ended and state_here in (None, "running", "unkillable") and state_here != c.state.value:
            updated += state_here is not None
            ops.append(
                RemoveChild(
                    ts=c.exited_at if c.exited_at is not None else c.registered_at,
                    session_id=s.id,
                    pid=c.pid,
                    start_ticks=c.start_ticks,
                    exit_code=c.exit_code,
                    state=c.state,
                )
            )
    have = read_extras(store, s.id)[0] if not created else ExportExtras()
    extra_rows, deletions, extra_counts = extras_ops(s.id, doc.extras, have)
    ops.extend(extra_rows)
    ops.extend(deletions)  # last: a deletion removes only what was written before it
    summary = {
        "session_id": s.id,
        "created": created,
        **extra_counts,
        "checkpoints": {"in_file": len(doc.checkpoints), "added": len(new_checkpoints)},
        "events": {"in_file": len(doc.events), "added": len(new_events)},
        "children": {"in_file": len(doc.children), "added": added, "updated": updated},
        "ops": len(ops),
    }
    return ops, summary


def cmd_import(args: argparse.Namespace, out: Output) -> int:
    """``import FILE``: bring an exported session into this store; idempotent."""
    doc = read_document(args.file)  # before the database is opened at all
    with open_store(resolve_db(args.db), args.timeout) as store:
        try:
            ops, summary = plan_import(store, doc)
        except ValueError as err:
            raise CliError(f"{args.file}: {one_line(str(err))}", EXIT_USAGE) from err
        errors: list[Exception | None] = []
        if ops:
            errors = store.apply_ops(ops)
            # An id the target already uses elsewhere (another session's checkpoint or event)
            # is ignored by the idempotent insert: count what landed, never what was planned.
            unstored = _not_stored(store, doc.session.id, ops, errors)
            unstored += keyed_not_stored(store, doc.session.id, ops)
        else:
            unstored = []
    rejected = [(op, err) for op, err in zip(ops, errors, strict=True) if err is not None]
    summary["rejected"] = len(rejected)
    summary["not_stored"] = len(unstored)
    if unstored:
        summary["checkpoints"]["added"] -= sum(k == "checkpoint" for k, _ in unstored)
        summary["events"]["added"] -= sum(k == "event" for k, _ in unstored)
        summary["keyed_checkpoints"]["added"] -= sum(k == "keyed checkpoint" for k, _ in unstored)

    def human(con: Console) -> None:
        if not ops:
            con.print(f"session {doc.session.id} already imported: nothing to do", markup=False)
            return
        con.print(
            f"{'created' if summary['created'] else 'updated'} session {doc.session.id} "
            f"({doc.session.name}): +{summary['checkpoints']['added']} checkpoint(s), "
            f"+{summary['events']['added']} event(s), +{summary['children']['added']} "
            f"child row(s), +{summary['keyed_checkpoints']['added']} keyed checkpoint(s), "
            f"+{summary['writes']['added']} write(s)",
            markup=False,
        )

    out.result(dump(summary), human)
    if unstored:
        kind, ident = unstored[0]
        out.warn(
            f"import: {len(unstored)} row(s) not stored: their ids are already "
            f"used by another session in this database (first: {kind} {ident})"
        )
        return EXIT_FAILED
    if rejected:
        first_op, first_err = rejected[0]
        out.warn(
            f"import: {len(rejected)} op(s) rejected, first {first_op.kind}: "
            f"{one_line(str(first_err))}"
        )
        return EXIT_FAILED
    return EXIT_OK
