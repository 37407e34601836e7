"""``prune``, ``vacuum`` and ``backup``: thin commands over the store's maintenance methods."""

from __future__ import annotations

import argparse

from rich.console import Console

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Output,
    fmt_bytes,
    fmt_time,
    open_store,
    quiet_store_warnings,
    resolve_db,
    rfc3339,
)

__all__ = ["cmd_backup", "cmd_prune", "cmd_vacuum"]


def cmd_prune(args: argparse.Namespace, out: Output) -> int:
    """``prune --older-than T``: delete sessions that ended before T, with all their records."""
    with (
        quiet_store_warnings(args.verbose),
        open_store(resolve_db(args.db), args.timeout) as store,
    ):
        report = store.prune_sessions(args.older_than, deadline_s=args.timeout)
    data = {
        "before": report.before,
        "before_rfc3339": rfc3339(report.before),
        "sessions_deleted": report.sessions,
        "tombstones_dropped": report.tombstones,
        "complete": report.complete,
        "journaled": report.journaled,
    }

    def human(con: Console) -> None:
        con.print(
            f"pruned {report.sessions} session(s) ended before {fmt_time(report.before)}"
            f"{'' if report.complete else ' (more left: run it again)'}; "
            f"dropped {report.tombstones} old tombstone(s)",
            markup=False,
        )

    out.result(data, human)
    if report.journaled:
        # Like a hook write: the op is durable in the journal and lands at the next open/replay.
        out.warn("prune: journaled (the database stayed locked)", journaled=True)
        return EXIT_OK
    return EXIT_OK if report.complete else EXIT_FAILED


def cmd_vacuum(args: argparse.Namespace, out: Output) -> int:
    """``vacuum``: rebuild the database file compactly."""
    with open_store(resolve_db(args.db), args.timeout) as store:
        report = store.vacuum()
    data = {
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "seconds": round(report.seconds, 6),
    }

    def human(con: Console) -> None:
        con.print(
            f"vacuumed: {fmt_bytes(report.bytes_before)} -> {fmt_bytes(report.bytes_after)} "
            f"in {report.seconds:.2f} s"
        )

    out.result(data, human)
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    """``backup DEST [--force]``: an online copy through SQLite's backup API."""
    # Read-only: a backup only reads, so it works on a database another user owns and never
    # creates side files beside it.
    with open_store(resolve_db(args.db), args.timeout, read_only=True) as store:
        try:
            report = store.backup(args.dest, force=args.force)
        except FileExistsError as err:
            raise CliError(f"{args.dest} exists; pass --force to replace it", EXIT_USAGE) from err
        except IsADirectoryError as err:
            raise CliError(f"{args.dest} is a directory", EXIT_USAGE) from err
    data = {
        "path": report.path,
        "bytes": report.bytes,
        "pages": report.pages,
        "seconds": round(report.seconds, 6),
        "integrity": report.integrity,
    }

    def human(con: Console) -> None:
        con.print(
            f"backed up to {report.path}: {fmt_bytes(report.bytes)} in {report.seconds:.2f} s "
            f"(quick_check: {report.integrity})",
            markup=False,
        )

    out.result(data, human)
    return EXIT_OK if report.integrity == "ok" else EXIT_FAILED
