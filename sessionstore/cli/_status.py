"""The ``status`` command: sessions by status, stale heartbeats, file sizes, newest checkpoint.

Shell hooks run it at exit storms, so it reads through a peek (``_peek``), not a store: plain
rows, no model, and pydantic never imported (about three quarters of a store-based start-up;
``benchmarks/README.md``). ``tests/cli/test_status.py`` fails if it ever is.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from .._enums import SessionStatus
from .._files import file_sizes
from .._peek import Peek, peek
from .._summaries import newest_checkpoint, owner_fields, stale_sessions, status_counts
from ._common import (
    EXIT_OK,
    Output,
    check_database,
    escape_markup,
    fmt_age,
    fmt_bytes,
    fmt_time,
    resolve_db,
    simple_table,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["cmd_status"]


def _counts(view: Peek) -> dict[str, int]:
    counts = {s.value: 0 for s in SessionStatus}
    counts.update(status_counts(view))
    return {"total": sum(counts.values()), **counts}


def _stale(view: Peek, stale_after_s: float, now: float) -> list[dict[str, Any]]:
    # An active session whose owner has not written a heartbeat (or, never having sent one, was
    # created) longer ago than the threshold: its orchestrator is probably gone or stuck.
    stale = []
    for sid, name, heartbeat_at, created_at, pid, ticks, boot_id, host in stale_sessions(
        view, now - stale_after_s
    ):
        last = heartbeat_at if heartbeat_at is not None else created_at
        stale.append(
            {
                "id": sid,
                "name": name,
                "heartbeat_at": heartbeat_at,
                "age_s": round(now - last, 3),
                "owner": owner_fields(pid, ticks, boot_id),  # as `sessions` shows it
                "owner_host": host,
            }
        )
    return stale


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    """``status``: sessions by status, stale heartbeats, file sizes, newest checkpoint."""
    path = resolve_db(args.db)
    now = time.time()
    check_database(path, args.timeout)
    with peek(path, args.timeout) as view:
        data: dict[str, Any] = {
            "db": view.path,
            **file_sizes(view.path),
            "sessions": _counts(view),
            "stale_after_s": args.stale_after,
            "stale": _stale(view, args.stale_after, now),
            "last_checkpoint": newest_checkpoint(view),
        }

    def human(con: Console) -> None:
        c = data["sessions"]
        con.print(
            f"[bold]database[/]  {escape_markup(data['db'])}  ({fmt_bytes(data['db_bytes'])}; "
            f"WAL {fmt_bytes(data['wal_bytes'])}; journal {fmt_bytes(data['journal_bytes'])})"
        )
        con.print(
            f"[bold]sessions[/]  {c['total']} total: "
            + ", ".join(f"{c[s.value]} {s.value}" for s in SessionStatus)
        )
        if data["journal_bytes"]:
            con.print("[yellow]journal holds ops not yet applied: run `sessionstore replay`[/]")
        if data["stale"]:
            con.print(
                f"[yellow]stale[/]     {len(data['stale'])} active session(s) silent for "
                f"more than {fmt_age(args.stale_after)}:"
            )
            t = simple_table()
            for col in ("id", "name", "last heartbeat", "silent for", "owner"):
                t.add_column(col, no_wrap=col == "id")
            for s in data["stale"]:
                t.add_row(
                    s["id"],
                    escape_markup(s["name"]),
                    fmt_time(s["heartbeat_at"]),
                    fmt_age(s["age_s"]),
                    f"{(s['owner'] or {}).get('pid', '-')}@{s['owner_host']}",
                )
            con.print(t)
        else:
            con.print(f"[bold]stale[/]     none (threshold {fmt_age(args.stale_after)})")
        cp = data["last_checkpoint"]
        if cp is None:
            con.print("[bold]last checkpoint[/]  none")
        else:
            name = escape_markup(repr(cp["name"]))
            con.print(
                f"[bold]last checkpoint[/]  {name} of session {cp['session_id']} at "
                f"{fmt_time(cp['created_at'])} ({fmt_age(now - cp['created_at'])} ago)"
            )

    out.result(data, human)
    return EXIT_OK
