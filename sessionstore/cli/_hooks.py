"""Hook-safe writes from the shell: log, heartbeat, checkpoint save, child add/remove.

Agent stop hooks and shell traps fire by the dozen at the same moment and must never hang a
shell (the seed incident: hooks racing for one SQLite lock for 14 minutes). Each command here is
one write through the store's public methods, bounded by ``--timeout`` in total:

* applied within the bound: exit 0, silent (``--json`` prints what was written);
* the lock could not be had in time: the store journals the op durably beside the database
  (any later open or close applies it), and the command still exits 0, with ``journaled`` on
  stderr;
* neither applied nor journaled (the journal itself failed, or is full): exit 6.

The bound is split between the two places a lock can be waited for: the write itself, and the
close, which applies whatever the journal holds (ours included) before it lets go. Each gets at
most half: a busy timeout of 1/8 per statement and a retry deadline of 1/4 (a wait that starts
just before the deadline may still run one more busy timeout: 1/8 + 1/4 + 1/8). Rejected:
closing without the replay, which would leave every journaled hook op waiting for some
long-lived process to open the file; and one busy timeout equal to the whole bound, which made a
journaled hook take twice its ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .._config import StoreConfig
from .._store import SessionStore
from ..errors import JournalFullError
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Output,
    check_database,
    dump,
    quiet_store_warnings,
    resolve_db,
)
from ._session import resolve_session

__all__ = [
    "EXIT_NOT_RECORDED",
    "cmd_checkpoint_save",
    "cmd_child_add",
    "cmd_child_remove",
    "cmd_heartbeat",
    "cmd_log",
    "hook_config",
    "parse_json_arg",
]

EXIT_NOT_RECORDED = 6
"""Neither applied nor journaled: the write is lost unless the caller retries."""

_MAX_DATA_BYTES = 16 * 1024 * 1024


def hook_config(timeout_s: float) -> StoreConfig:
    """The store settings of one hook write bounded by ``timeout_s`` (see the module docstring).

    Args:
        timeout_s: the whole write's bound, seconds.
    """
    return StoreConfig(
        busy_timeout_ms=max(1, int(timeout_s * 1000 / 8)),
        write_deadline_s=max(timeout_s / 4, 0.001),
        replay_on_open=False,
        checkpointing=False,
        # The final TRUNCATE of a short-lived hook is maintenance it should not wait for: it
        # holds the write lock while it waits, stalling the other hooks of the storm.
        checkpoint_busy_timeout_ms=0,
        close_timeout_s=min(timeout_s / 4, 1.0),
        read_connections=1,
    )


def parse_json_arg(text: str | None, what: str) -> Any:
    """``--data``: inline JSON, ``@FILE``, or ``@-`` for stdin; None stays None.

    Raises:
        CliError: unreadable file or invalid JSON (exit 2).
    """
    if text is None:
        return None
    source = "argument"
    if text.startswith("@"):
        source = text[1:] or "-"
        try:
            if source == "-":
                text = sys.stdin.read(_MAX_DATA_BYTES + 1)
            else:
                with open(source, encoding="utf-8") as f:
                    text = f.read(_MAX_DATA_BYTES + 1)
        except (OSError, UnicodeDecodeError) as err:
            raise CliError(f"{what}: cannot read {source}: {err}", EXIT_USAGE) from err
        if len(text) > _MAX_DATA_BYTES:
            raise CliError(f"{what}: {source} is larger than 16 MiB", EXIT_USAGE)
    try:
        return json.loads(text)
    except ValueError as err:
        raise CliError(f"{what}: not JSON ({source}): {err}", EXIT_USAGE) from err


def _hook(
    args: argparse.Namespace, out: Output, what: str, write: Callable[[SessionStore, str], Any]
) -> int:
    t0 = time.monotonic()
    path = resolve_db(args.db)
    check_database(path, args.timeout)
    with quiet_store_warnings(args.verbose):
        return _hook_write(args, out, what, write, path, t0)


def _hook_write(
    args: argparse.Namespace,
    out: Output,
    what: str,
    write: Callable[[SessionStore, str], Any],
    path: str,
    t0: float,
) -> int:
    store = SessionStore.open(path, config=hook_config(args.timeout))
    journaled = False
    try:
        session = resolve_session(store, args.session)
        before = store.stats().journaled
        try:
            result = write(store, session.id)
        except (ProcessLookupError, PermissionError) as err:
            raise CliError(f"{what}: {err.args[-1] if err.args else err}", EXIT_USAGE) from err
        except (JournalFullError, OSError) as err:
            raise CliError(
                f"{what}: not recorded: neither applied nor journaled: {err}", EXIT_NOT_RECORDED
            ) from err
        journaled = store.stats().journaled > before
    finally:
        close = store.close()
    elapsed = time.monotonic() - t0
    if journaled:
        out.warn(
            f"{what}: journaled (database locked past the write deadline); "
            "applied by the next process that opens or closes it",
            journaled=True,
        )
    if out.json_mode:
        out.json(
            {
                "command": what,
                "session_id": session.id,
                "applied": not journaled,
                "journaled": journaled,
                "result": dump(result),
                "elapsed_s": round(elapsed, 4),
                "journal_replayed_at_close": close.replayed,
            },
            indent=None,
        )
    return EXIT_OK


def cmd_log(args: argparse.Namespace, out: Output) -> int:
    """``log SESSION MESSAGE [--level L] [--data JSON|@FILE]``: append one event."""
    data = parse_json_arg(args.data, "log --data")
    return _hook(
        args,
        out,
        "log",
        lambda store, sid: store.log_event(sid, args.message, level=args.level, data=data),
    )


def cmd_heartbeat(args: argparse.Namespace, out: Output) -> int:
    """``heartbeat SESSION``: record that the session's owner is alive now."""
    return _hook(args, out, "heartbeat", lambda store, sid: store.heartbeat(sid))


def cmd_checkpoint_save(args: argparse.Namespace, out: Output) -> int:
    """``checkpoint save SESSION NAME --data JSON|@FILE``: save a named JSON snapshot."""
    data = parse_json_arg(args.data, "checkpoint save --data")
    return _hook(
        args,
        out,
        "checkpoint save",
        lambda store, sid: store.save_checkpoint(sid, args.name, data),
    )


def cmd_child_add(args: argparse.Namespace, out: Output) -> int:
    """``child add SESSION PID``: record a running process (its identity captured now)."""
    return _hook(args, out, "child add", lambda store, sid: store.add_child(sid, args.pid))


def cmd_child_remove(args: argparse.Namespace, out: Output) -> int:
    """``child remove SESSION PID [--exit-code N]``: record that a child ended."""
    return _hook(
        args,
        out,
        "child remove",
        lambda store, sid: store.remove_child(sid, args.pid, exit_code=args.exit_code),
    )
