"""``python -m sessionstore demo``: a small orchestrator that shows the whole contract at work.

It creates a session, spawns three workers through the process layer (``polite`` exits on
SIGTERM, ``stubborn`` ignores it, ``parent`` has a grandchild), writes heartbeats and events while
a live progress line runs, and after ``--seconds`` (or Ctrl+C / SIGTERM) shuts down through
:meth:`ProcessLayer.shutdown`: children first, final state next, the database last. It then
prints how each process ended and how fast, what the store did at close, and the command that
resumes the session. A signal-caused run ends by that signal (130/143 in a shell) after printing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import _queries
from .._config import StoreConfig
from .._models import ChildProcess
from .._store import SessionStore
from ..errors import StoreClosedError
from ..process import ChildOutcome, ProcessLayer, ShutdownReport
from ..process._os import exit_by_signal
from ._common import EXIT_OK, Output, check_database, dump, fmt_bytes, resolve_db

__all__ = ["cmd_demo"]

_WORKER_ROLES = ("polite", "stubborn", "parent")
_READY_TIMEOUT_S = 15.0  # worker start-up (imports) on a slow CI machine; a backstop only
_TICK_S = 0.1  # progress refresh; also how often the loop looks at the clock
_HEARTBEAT_EVERY_S = 0.5
_EVENT_EVERY_S = 1.0
_SIGNAL_NAMES = {-s.value: s.name for s in signal.Signals}


def _worker_argv(role: str, db: str, session_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sessionstore.cli._demo_worker",
        "--role",
        role,
        "--db",
        db,
        "--session",
        session_id,
    ]


def _wait_ready(procs: dict[int, subprocess.Popen[Any]], layer: ProcessLayer) -> None:
    """Wait until every worker said ``ready`` (or died, or a signal began the shutdown)."""
    sel = selectors.DefaultSelector()
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            sel.register(proc.stdout, selectors.EVENT_READ, proc)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while sel.get_map() and layer.state == "idle":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(timeout=min(remaining, _TICK_S)):
                sel.unregister(key.fileobj)
                key.fileobj.readline()  # type: ignore[union-attr]  # "ready", or EOF: it died
    finally:
        sel.close()
        for proc in procs.values():
            if proc.stdout is not None:
                proc.stdout.close()


class _Progress:
    """The live progress line (a rich Live on a terminal; a line per second in a log)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.text = Text("")
        self._last_plain = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.enabled and self.console.is_terminal:
            with Live(self.text, console=self.console, refresh_per_second=10, transient=True):
                yield
        else:
            yield

    def update(self, line: str) -> None:
        if not self.enabled:
            return
        if self.console.is_terminal:
            self.text.plain = line
            return
        now = time.monotonic()
        if now - self._last_plain >= 1.0:
            self._last_plain = now
            self.console.print(line, markup=False, highlight=False)


def _count_events(store: SessionStore, session_id: str) -> int:
    with store.lease("demo progress") as lease:
        return _queries.count_events(lease, session_id)


def _run_loop(
    store: SessionStore,
    layer: ProcessLayer,
    session_id: str,
    procs: dict[int, subprocess.Popen[Any]],
    seconds: float,
    progress: _Progress,
) -> None:
    """Heartbeats, events and the progress line until the time is up or a signal arrives."""
    start = time.monotonic()
    deadline = start + seconds
    next_heartbeat = next_event = start
    ticks = 0
    with progress.running():
        while layer.state == "idle":
            now = time.monotonic()
            if now >= deadline:
                return
            try:
                if now >= next_heartbeat:
                    store.heartbeat(session_id)
                    next_heartbeat = now + _HEARTBEAT_EVERY_S
                if now >= next_event:
                    ticks += 1
                    store.log_event(
                        session_id, f"orchestrator tick {ticks}", data={"elapsed_s": now - start}
                    )
                    next_event = now + _EVENT_EVERY_S
                events = _count_events(store, session_id)
            except StoreClosedError:
                return  # a signal's shutdown closed the store under us: it is handling it
            running = sum(p.poll() is None for p in procs.values())
            progress.update(
                f"demo {now - start:4.1f}/{seconds:g} s | {events} events | "
                f"{running}/{len(procs)} workers running | WAL {fmt_bytes(store.stats().wal_bytes)}"
                " | Ctrl+C stops"
            )
            # Paced by the layer's own event: returns early the moment a shutdown finishes.
            layer.wait(timeout=max(0.0, min(_TICK_S, deadline - now)))


def _how(outcome: ChildOutcome) -> str:
    code = outcome.exit_code
    by = f" ({_SIGNAL_NAMES[code]})" if code is not None and code in _SIGNAL_NAMES else ""
    return f"{outcome.outcome}{by}"


def _ended_after_ms(row: ChildProcess | None, started_at: float) -> float | None:
    if row is None or row.exited_at is None:
        return None
    return max(0.0, (row.exited_at - started_at) * 1000)


def _final_rows(db: str, session_id: str) -> tuple[list[ChildProcess], int, str | None]:
    """Reopen the database after shutdown: child rows, ops replayed at open, session status.

    Opening applies the journal (ops that arrived after the close, if any), like any later
    process would; that count is part of what the demo shows.
    """
    store = SessionStore.open(db, config=StoreConfig(checkpointing=False))
    try:
        rows = store.children(session_id, include_exited=True)
        status = store.get_session(session_id).status.value
        return rows, store.open_replay.applied, status
    finally:
        store.close()


def _render(
    con: Console,
    report: ShutdownReport,
    roles: dict[int, str],
    rows: list[ChildProcess],
    replayed_at_reopen: int,
    resume: str,
) -> None:
    by_pid = {r.pid: r for r in rows}
    cause = report.cause + (f": {report.reason}" if report.reason else "")
    con.print()
    con.print(
        f"[bold]Shutdown of session {report.session_id}[/] ({escape(cause)}) "
        f"in {report.duration_s * 1000:.0f} ms"
    )
    t = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for col, justify in (
        ("pid", "right"),
        ("role", "left"),
        ("how it ended", "left"),
        ("exit code", "right"),
        ("ended after", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for o in [*report.children, *report.descendants]:
        ms = _ended_after_ms(by_pid.get(o.pid), report.started_at)
        t.add_row(
            str(o.pid),
            roles.get(o.pid, "grandchild" if o.source == "descendant" else o.source),
            _how(o),
            "-" if o.exit_code is None else str(o.exit_code),
            "-" if ms is None else f"{ms:.0f} ms",
        )
    con.print(t)
    # Only the phases that took measurable time; the full set is in --json.
    phases = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.phases.items() if v >= 0.0005)
    con.print(f"phases            {phases}")
    con.print(
        f"SIGKILL needed    {'yes' if report.escalated_to_sigkill else 'no'}; "
        f"no orphans left: {'[green]verified[/]' if report.verified_no_orphans else '[red]NO[/]'}"
    )
    status = report.session_status.value if report.session_status else "?"
    con.print(f"session           {status}; final checkpoint written")
    close = report.close_report
    if close is not None:
        con.print(
            f"store close       queued ops applied {close.applied_from_queue}, journal ops "
            f"replayed {close.replayed}, journaled {close.journaled}; later open replayed "
            f"{replayed_at_reopen}"
        )
        con.print(
            f"WAL               {fmt_bytes(close.wal_bytes_before)} before the final "
            f"checkpoint -> {fmt_bytes(close.wal_bytes_after)} after"
        )
    for err in [*report.errors, *(e.error for e in report.callback_errors)]:
        con.print(f"[yellow]note[/]              {escape(err)}")
    con.print(f"resume with       [bold]{escape(resume)}[/]", soft_wrap=True)


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: run the orchestrator for ``--seconds`` and print its shutdown report."""
    db = os.path.abspath(resolve_db(args.db))
    if os.path.exists(db):
        # Never write our schema into an empty file or another application's database.
        check_database(db, args.timeout)
    else:
        os.makedirs(os.path.dirname(db), exist_ok=True)  # only the demo creates a database
    store = SessionStore.open(
        db, config=StoreConfig(busy_timeout_ms=int(args.timeout * 1000), close_timeout_s=2.0)
    )
    session = store.create_session(
        "demo",
        objective="three workers, one ordered shutdown",
        metadata={"seconds": args.seconds, "grace_s": args.grace},
    )
    # exit_on_signal=False: on Ctrl+C the layer shuts down on its own thread; this thread then
    # prints the report and ends the process by the signal itself.
    layer = ProcessLayer(
        store, session.id, grace_s=args.grace, kill_verify_s=1.0, exit_on_signal=False
    )
    layer.install()
    reason = "demo interrupted"
    try:
        procs: dict[int, subprocess.Popen[Any]] = {}
        roles: dict[int, str] = {}
        for role in _WORKER_ROLES:
            proc = layer.spawn(
                _worker_argv(role, db, session.id), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
            )
            procs[proc.pid] = proc
            roles[proc.pid] = role
        store.log_event(session.id, "demo started", data={"workers": roles})
        if not out.json_mode:
            out.console.print(
                f"demo: session [bold]{session.id}[/] in {escape(db)}; workers "
                + ", ".join(f"{role} {pid}" for pid, role in roles.items())
            )
        _wait_ready(procs, layer)
        progress = _Progress(out.console, enabled=not out.json_mode)
        _run_loop(store, layer, session.id, procs, args.seconds, progress)
        reason = f"demo finished after {args.seconds:g} s"
    finally:
        # Whatever happened above, the one shutdown runs before we go on. After a signal it
        # already ran on the layer's thread: this call then just returns that same report.
        report = layer.shutdown(reason=reason)
        layer.uninstall()
    rows, replayed, status = _final_rows(db, session.id)
    resume = f"python -m sessionstore --db {shlex.quote(db)} resume {session.id}"
    exit_code = 128 + report.signal_number if report.signal_number else EXIT_OK
    data: dict[str, Any] = {
        "db": db,
        "session_id": session.id,
        "roles": {str(pid): role for pid, role in roles.items()},
        "report": dump(report),
        "child_rows": dump(rows),
        "session_status": status,
        "replayed_at_reopen": replayed,
        "resume_command": resume,
        "exit_code": exit_code,
    }
    out.result(data, lambda con: _render(con, report, roles, rows, replayed, resume))
    if report.signal_number:
        exit_by_signal(report.signal_number)
    return exit_code
