"""The operator commands that maintain a store: checkpoint, doctor, replay, resume and reap."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import _queries
from .._files import file_sizes, rejected_path
from .._migrate import file_journal_mode, latest_version
from .._models import ReplayReport
from .._store import SessionStore
from ..errors import StoreBusyError
from ._common import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    Output,
    dump,
    fmt_bytes,
    fmt_time,
    open_store,
    quiet_store_warnings,
    resolve_db,
    simple_table,
)
from ._hooks import hook_config
from ._session import resolve_session

if TYPE_CHECKING:
    from ..process import ReapReport

__all__ = [
    "cmd_checkpoint",
    "cmd_doctor",
    "cmd_reap",
    "cmd_replay",
    "cmd_resume",
    "reaper",
]

# Past this the WAL is worth a look: the checkpointer keeps it near 4 MiB unless a long reader
# pins it (DESIGN.md incident 4).
_LARGE_WAL = 64 * 1024 * 1024


def reaper() -> Callable[..., ReapReport] | None:
    """``sessionstore.process.reap_orphans``, or None where the process layer cannot load.

    Imported lazily: the read commands must not pay for the process layer's imports, and on a
    platform it does not support (Windows) the rest of the CLI still works.
    """
    try:
        from ..process import reap_orphans
    except ImportError:
        return None
    return reap_orphans


def cmd_checkpoint(args: argparse.Namespace, out: Output) -> int:
    """``checkpoint``: a ``wal_checkpoint(TRUNCATE)`` now; exit 1 when readers kept it busy."""
    with open_store(resolve_db(args.db), args.timeout) as store:
        result = store.checkpoint("TRUNCATE")

    def human(con: Console) -> None:
        state = "[green]done[/]" if result.ok else f"[yellow]busy[/] ({escape(str(result.error))})"
        con.print(
            f"TRUNCATE checkpoint {state} in {result.duration_s * 1000:.1f} ms: "
            f"WAL {fmt_bytes(result.wal_bytes_before)} -> {fmt_bytes(result.wal_bytes_after)}"
            + (f", {result.checkpointed_frames}/{result.log_frames} frames" if result.ok else "")
        )

    out.result({"checkpoint": dump(result)}, human)
    if not result.ok:
        out.warn("checkpoint busy: another process is reading; try again later")
        return EXIT_FAILED
    return EXIT_OK


def _pragmas(store: SessionStore) -> dict[str, Any]:
    with store.lease("cli doctor") as lease:
        found = _queries.pragmas(lease)
    if store.snapshot is not None:  # an immutable read says "delete" whatever the file is
        found["journal_mode"] = file_journal_mode(store.path)
    found["schema_version_supported"] = latest_version()
    found["sqlite_version"] = apsw.sqlite_lib_version()
    return found


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    """``doctor``: integrity, pragmas, file sizes and orphans; exit 1 when unhealthy."""
    problems: list[str] = []
    warnings: list[str] = []
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        with store.lease("cli doctor") as lease:
            integrity = _queries.integrity_check(lease)
            fk_violations = _queries.foreign_key_violations(lease)
        pragmas = _pragmas(store)
        sizes = file_sizes(store.path)
        reap = reaper()
        reap_report = None if reap is None else reap(store, dry_run=True)
        if reap is None:
            warnings.append("process layer not available: orphans not checked")
        path = store.path

    if integrity != ["ok"]:
        problems.append(f"integrity_check: {'; '.join(integrity[:5])}")
    if fk_violations:
        problems.append(f"{fk_violations} foreign key violation(s)")
    if str(pragmas["journal_mode"]).lower() != "wal":
        problems.append(f"journal_mode is {pragmas['journal_mode']}, not wal")
    if pragmas["user_version"] != pragmas["schema_version_supported"]:
        warnings.append(
            f"schema version {pragmas['user_version']}; the next open migrates it to "
            f"{pragmas['schema_version_supported']}"
        )
    if sizes["wal_bytes"] > _LARGE_WAL:
        warnings.append(
            f"WAL is {fmt_bytes(sizes['wal_bytes'])}: a long-lived reader may pin it; "
            "run `sessionstore checkpoint`"
        )
    if sizes["journal_bytes"]:
        warnings.append(
            f"{fmt_bytes(sizes['journal_bytes'])} of journaled ops not applied yet; "
            "run `sessionstore replay`"
        )
    if sizes["rejected_bytes"]:
        warnings.append(
            f"{fmt_bytes(sizes['rejected_bytes'])} of ops that could not apply are kept aside "
            f"in {rejected_path(path)}"
        )
    orphan_count, dead_sessions = _orphan_counts(reap_report)
    if orphan_count:
        problems.append(
            f"{orphan_count} orphaned process(es) of dead orchestrators; run `sessionstore reap`"
        )
    elif dead_sessions:
        warnings.append(
            f"{dead_sessions} session(s) of dead orchestrators still open; "
            "`sessionstore reap` marks them crashed"
        )
    data = {
        "db": path,
        "healthy": not problems,
        "integrity": integrity,
        "foreign_key_violations": fk_violations,
        "pragmas": pragmas,
        **sizes,
        "orphans": orphan_count,
        "dead_owner_sessions": dead_sessions,
        "reap_dry_run": dump(reap_report),
        "problems": problems,
        "warnings": warnings,
    }

    def human(con: Console) -> None:
        verdict = "[green]healthy[/]" if not problems else "[red]UNHEALTHY[/]"
        con.print(f"[bold]{escape(path)}[/]: {verdict}")
        t = Table(box=box.SIMPLE, show_header=False, show_edge=False)
        t.add_column("check")
        t.add_column("value")
        t.add_row("integrity_check", "; ".join(integrity[:5]))
        t.add_row("foreign keys", f"{fk_violations} violation(s)")
        for k, v in pragmas.items():
            t.add_row(k, str(v))
        for k, v in sizes.items():
            t.add_row(k.replace("_bytes", ""), fmt_bytes(v))
        t.add_row("orphans", "not checked" if reap_report is None else str(orphan_count))
        con.print(t)
        for p in problems:
            con.print(f"[red]problem[/]  {escape(p)}")
        for w in warnings:
            con.print(f"[yellow]warning[/]  {escape(w)}")

    out.result(data, human)
    if problems:
        out.warn(f"doctor: {'; '.join(problems)}", problems=problems)
        return EXIT_FAILED
    return EXIT_OK


def _orphan_counts(report: ReapReport | None) -> tuple[int, int]:
    """(live orphaned processes, sessions of dead orchestrators) in a dry-run report.

    The count is what ``reap`` would end, found by the same enumeration: recorded children
    still alive, plus the members of their trees found by group, tree marker and cgroup
    (``descendants_ended`` of a dry run), daemons of children that already exited included.
    """
    if report is None:
        return 0, 0
    alive = sum(
        sum(1 for c in s.children if c.action == "would_terminate") + s.descendants_ended
        for s in report.sessions
    )
    return alive, len(report.sessions)


def cmd_replay(args: argparse.Namespace, out: Output) -> int:
    """``replay``: apply the op journal beside the database now."""
    with open_store(resolve_db(args.db), args.timeout) as store:
        before = store.stats().journal_bytes
        report = store.replay()
        after = store.stats().journal_bytes
    data = {"replay": dump(report), "journal_bytes_before": before, "journal_bytes_after": after}

    def human(con: Console) -> None:
        if not before:
            con.print("journal empty: nothing to replay")
            return
        con.print(
            f"replayed {report.applied} op(s) ({fmt_bytes(before)} of journal); "
            f"rejected {report.rejected}, invalid {report.invalid}, torn {report.torn}"
        )
        if report.rejected_path:
            con.print(f"[yellow]kept aside in {escape(report.rejected_path)}[/]")

    out.result(data, human)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, out: Output) -> int:
    """``resume SESSION``: make the session active again and print its last checkpoint."""
    # Bounded like a hook write (the whole command within --timeout), and one line when the
    # lock could not be had: the resume is then journaled and applies at the next open.
    with (
        quiet_store_warnings(args.verbose),
        open_store(resolve_db(args.db), args.timeout, config=hook_config(args.timeout)) as store,
    ):
        before = resolve_session(store, args.session)
        journaled = store.stats().journaled
        # Resume first: it is the step that may be refused (a completed session), and a refused
        # command must leave the file unchanged. The journal is applied after it; status changes
        # are last-writer-wins by time, so an older journaled "stop" cannot undo this resume.
        # The owner is cleared: this command ends in a moment, and a dead owner would make the
        # reaper take the resumed session for an orphan. The orchestrator that picks the session
        # up records itself (`run --session` does).
        store.resume_session_with_owner(before.id, claim=False)
        if store.stats().journaled > journaled:
            raise CliError(
                f"resume: {store.path} stayed locked past {args.timeout:g} s; the resume was "
                "journaled and applies when the database is next opened",
                EXIT_BUSY,
            )
        try:
            replayed = store.replay()
        except StoreBusyError:
            replayed = ReplayReport()  # resumed; the journal stays for the next open
        session = store.get_session(before.id)
        last = store.latest_checkpoint(before.id)
    data = {
        "session": dump(session),
        "previous_status": before.status.value,
        "last_checkpoint": dump(last),
        "replayed": replayed.applied,
    }

    def human(con: Console) -> None:
        con.print(
            f"session {session.id} ({escape(session.name)}) is [bold]{session.status.value}[/] "
            f"(was {before.status.value})"
        )
        if replayed.applied:
            con.print(f"applied {replayed.applied} journaled op(s) first")
        if last is None:
            con.print("no checkpoint saved: start from scratch")
        else:
            con.print(
                f"last checkpoint {last.name!r} at {fmt_time(last.created_at)}:", markup=False
            )
            con.print_json(data=last.data)

    out.result(data, human)
    return EXIT_OK


def cmd_reap(args: argparse.Namespace, out: Output) -> int:
    """``reap``: end the recorded children of sessions whose orchestrator is gone."""
    reap = reaper()
    if reap is None:
        raise CliError("the process layer (sessionstore.process) is not available here")
    with open_store(resolve_db(args.db), args.timeout) as store:
        report = reap(store, dry_run=args.dry_run)
    data = {"dry_run": args.dry_run, "report": dump(report)}

    def human(con: Console) -> None:
        if not report.sessions:
            con.print("no sessions of dead orchestrators: nothing to reap")
            return
        t = simple_table()
        for col in ("session", "name", "owner", "status", "pid", "identity", "action"):
            t.add_column(col, no_wrap=col == "session")
        for s in report.sessions:
            status = f"{s.previous_status.value} -> {s.new_status.value}"
            owner = f"{s.owner_pid} ({s.owner_identity})"
            if not s.children:
                t.add_row(s.session_id, escape(s.name), owner, status, "-", "-", "-")
            for c in s.children:
                t.add_row(
                    s.session_id, escape(s.name), owner, status, str(c.pid), c.identity, c.action
                )
        con.print(("would reap (dry run)" if args.dry_run else "reaped") + ":")
        con.print(t)

    out.result(data, human)
    return EXIT_OK
