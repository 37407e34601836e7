"""The operator commands that read a store: sessions, show, events and children.

(``status`` reads without a store, for its start-up: ``_status``.)

Each takes the parsed arguments and an :class:`Output` and returns the exit code. The JSON
documents they print are a stable interface (README "CLI"): keys are only ever added.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _queries
from .._identity import IdentityStatus
from .._models import Checkpoint, ChildProcess, Event, Session
from .._store import SessionStore
from ._common import (
    EXIT_OK,
    Output,
    dump,
    escape_markup,
    fmt_age,
    fmt_time,
    open_store,
    resolve_db,
    simple_table,
)
from ._session import resolve_session

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "cmd_children",
    "cmd_events",
    "cmd_sessions",
    "cmd_show",
    "recent_events",
]

_FOLLOW_PAGE = 1000


def recent_events(store: SessionStore, session_id: str, count: int) -> list[Event]:
    """The last ``count`` events of a session, oldest first."""
    with store.lease("cli recent events") as lease:
        first = _queries.first_of_last_events(lease, session_id, count)
    if first is None:
        return []
    return store.events(session_id, after_id=first - 1, limit=count)


def _sessions_table(sessions: list[Session], now: float) -> Table:
    t = simple_table()
    for col in ("id", "name", "status", "created", "last heartbeat", "owner"):
        t.add_column(col, no_wrap=col == "id")
    for s in sessions:
        hb = f"{fmt_age(now - s.heartbeat_at)} ago" if s.heartbeat_at else "-"
        owner = f"{s.owner.pid}@{s.owner_host}" if s.owner else "-"
        t.add_row(s.id, escape_markup(s.name), s.status.value, fmt_time(s.created_at), hb, owner)
    return t


def cmd_sessions(args: argparse.Namespace, out: Output) -> int:
    """``sessions``: every session (optionally of one status), oldest first."""
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        sessions = store.list_sessions(args.status)
    if args.name is not None:
        sessions = [s for s in sessions if s.name == args.name]
    if args.since is not None:
        sessions = [s for s in sessions if s.created_at >= args.since]
    if args.limit is not None:
        sessions = sessions[-args.limit :] if args.limit else []  # the newest, still oldest first
    now = time.time()

    def human(con: Console) -> None:
        if not sessions:
            con.print("no sessions")
            return
        con.print(_sessions_table(sessions, now))

    out.result({"sessions": dump(sessions)}, human)
    return EXIT_OK


def _identity_now(child: ChildProcess) -> IdentityStatus:
    # Only rows still believed running are checked: an ended child's PID may be a stranger now.
    if child.state.value not in ("running", "unkillable"):
        return IdentityStatus.GONE
    return child.identity.check()


def _child_doc(child: ChildProcess) -> dict[str, Any]:
    now = _identity_now(child)
    # "identity": the process's identity checked now, the same key as `stop`'s owner candidates.
    return {**dump(child), "identity": now.value, "alive": now is IdentityStatus.ALIVE}


def _children_table(children: list[dict[str, Any]], *, with_session: bool) -> Table:
    t = simple_table()
    cols = ["session"] if with_session else []
    cols += ["pid", "pgid", "state", "exit", "now", "registered", "argv"]
    for col in cols:
        t.add_column(col, no_wrap=col in ("session", "pid"), overflow="fold")
    for c in children:
        row = [c["session_id"]] if with_session else []
        row += [
            str(c["pid"]),
            str(c["pgid"]) if c["pgid"] is not None else "-",
            c["state"],
            str(c["exit_code"]) if c["exit_code"] is not None else "-",
            c["identity"],
            fmt_time(c["registered_at"]),
            escape_markup(" ".join(c["argv"])),
        ]
        t.add_row(*row)
    return t


def _checkpoint_line(cp: Checkpoint | None) -> str:
    if cp is None:
        return "none"
    return f"{cp.name!r} at {fmt_time(cp.created_at)} (id {cp.id})"


def _event_line(e: Event) -> str:
    data = "" if e.data is None else f"  {json.dumps(e.data, ensure_ascii=False)}"
    return f"{fmt_time(e.created_at)}  #{e.id:<6} {e.level:<8} {e.message}{data}"


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    """``show SESSION``: the session, its children, last checkpoint and recent events."""
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        session = resolve_session(store, args.session)
        children = [_child_doc(c) for c in store.children(session.id, include_exited=True)]
        last = store.latest_checkpoint(session.id)
        events = recent_events(store, session.id, args.events)
    data = {
        "session": dump(session),
        "children": children,
        "last_checkpoint": dump(last),
        "events": dump(events),
    }

    def human(con: Console) -> None:
        now = time.time()
        con.print(
            f"[bold]{escape_markup(session.name)}[/]  {session.id}  [bold]{session.status.value}[/]"
        )
        if session.objective:
            con.print(f"objective   {escape_markup(session.objective)}")
        owner = f"pid {session.owner.pid} on {session.owner_host}" if session.owner else "-"
        con.print(f"owner       {owner}")
        con.print(f"created     {fmt_time(session.created_at)}")
        hb = session.heartbeat_at
        con.print(f"heartbeat   {fmt_time(hb)}" + (f" ({fmt_age(now - hb)} ago)" if hb else ""))
        if session.metadata:
            con.print(f"metadata    {escape_markup(json.dumps(session.metadata))}")
        con.print(f"checkpoint  {escape_markup(_checkpoint_line(last))}")
        con.print(f"[bold]children[/] ({len(children)})")
        if children:
            con.print(_children_table(children, with_session=False))
        con.print(f"[bold]last {len(events)} event(s)[/]")
        for e in events:
            con.print(_event_line(e), markup=False)

    out.result(data, human)
    return EXIT_OK


_LEVEL_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3, "critical": 4}


def _event_filter(args: argparse.Namespace) -> Callable[[Event], bool] | None:
    """``--since/--until/--level`` as one predicate, or None when none is given."""
    since, until, level = args.since, args.until, args.level
    if since is None and until is None and level is None:
        return None
    rank = _LEVEL_RANK[level] if level is not None else 0

    def keep(e: Event) -> bool:
        return (
            (since is None or e.created_at >= since)
            and (until is None or e.created_at < until)
            and _LEVEL_RANK.get(e.level, 0) >= rank
        )

    return keep


def _scan(
    store: SessionStore,
    args: argparse.Namespace,
    keep: Callable[[Event], bool],
    latest: int | None,
) -> tuple[list[Event], int]:
    """The matching events after ``args.after``: the first ``--limit``, or the ``latest`` N.

    Pages through the session by id: an event's time is its op's, and an op journaled and
    replayed late gets a newer id than younger events, so no id range can stand in for a time
    range. Returns the matches and the last id read (where a follow goes on from).
    """
    after = args.after or 0
    found: collections.deque[Event] | list[Event] = (
        collections.deque(maxlen=latest) if latest is not None else []
    )
    while True:
        page = store.events(args.session, after_id=after, limit=_FOLLOW_PAGE)
        for e in page:
            if keep(e):
                found.append(e)
                if latest is None and len(found) >= args.limit:
                    return list(found), e.id or after
        if page:
            after = page[-1].id or after
        if len(page) < _FOLLOW_PAGE:
            return list(found), after


def _emit_stream(out: Output, events: list[Event]) -> None:
    for e in events:
        if out.json_mode:
            out.json(e, indent=None)  # JSON Lines: one event per line
        else:
            out.console.print(_event_line(e), markup=False)


def cmd_events(args: argparse.Namespace, out: Output) -> int:
    """``events SESSION``: a page of events, or ``--follow`` new ones as they are written."""
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        # An unknown id fails before anything is printed; a prefix or name becomes the id.
        args.session = resolve_session(store, args.session).id
        keep = _event_filter(args)
        if keep is not None:
            lines = args.lines if args.lines is not None else (10 if args.follow else None)
            if args.follow and args.since is not None and args.lines is None:
                lines = None  # asked to start at a time: everything since it, then follow
            events, last_read = _scan(store, args, keep, lines)
            if args.follow:
                _emit_stream(out, events)
                args.after = last_read
                return _follow(store, args, out, keep)
            return _print_events(args, out, events, last_read)
        if args.after is None:
            # Like tail: -n N is the latest N; --follow starts near the end (the last 10) unless
            # --after asks for an earlier start, so a long log is not replayed in full.
            lines = args.lines if args.lines is not None else (10 if args.follow else None)
            if lines is not None:
                tail = recent_events(store, args.session, lines) if lines else []
                newest = recent_events(store, args.session, 1)
                start = tail[0].id if tail else (newest[0].id if newest else None)
                args.after = max((start or 1) - (1 if tail else 0), 0)
        after = args.after or 0
        if args.follow:
            args.after = after
            return _follow(store, args, out)
        events = store.events(args.session, after_id=after, limit=args.limit)
    return _print_events(args, out, events, events[-1].id if events else after)


def _print_events(
    args: argparse.Namespace, out: Output, events: list[Event], last_id: int | None
) -> int:
    data = {"session_id": args.session, "events": dump(events), "last_id": last_id}

    def human(con: Console) -> None:
        for e in events:
            con.print(_event_line(e), markup=False)
        if not events:
            con.print("no events" + (f" after #{args.after}" if args.after else ""))

    out.result(data, human)
    return EXIT_OK


def _follow(
    store: SessionStore,
    args: argparse.Namespace,
    out: Output,
    keep: Callable[[Event], bool] | None = None,
) -> int:
    # Poll by event id. SQLite has no cross-process change notification, so a paced poll is the
    # mechanism here (each poll is one indexed range read; no read transaction is held between
    # polls, so the follower never pins the WAL). Ends at --follow-timeout or on Ctrl+C (130).
    deadline = None if args.follow_timeout is None else time.monotonic() + args.follow_timeout
    after = args.after
    while True:
        events = store.events(args.session, after_id=after, limit=_FOLLOW_PAGE)
        _emit_stream(out, events if keep is None else [e for e in events if keep(e)])
        if events:
            after = events[-1].id
            if len(events) == _FOLLOW_PAGE:
                continue  # a backlog: read on without pausing
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return EXIT_OK
        time.sleep(args.interval if remaining is None else min(args.interval, remaining))


def cmd_children(args: argparse.Namespace, out: Output) -> int:
    """``children``: recorded child processes, with whether each is alive now."""
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        include_exited = bool(args.all)
        if args.session:
            args.session = resolve_session(store, args.session).id
        rows = (
            store.children(args.session, include_exited=include_exited)
            if args.session
            else store.all_children(include_exited=include_exited)
        )
    children = [_child_doc(c) for c in rows]
    if args.alive:
        children = [c for c in children if c["alive"]]

    def human(con: Console) -> None:
        if not children:
            con.print("no children" + (" alive" if args.alive else " recorded as running"))
            return
        con.print(_children_table(children, with_session=not args.session))

    out.result({"children": children}, human)
    return EXIT_OK
