"""The ``sessionstore`` command line: the demo, operator commands, reap and stress.

``python -m sessionstore [--db PATH] COMMAND [--json] ...``. Every command prints a readable
report, or with ``--json`` one JSON document with stable keys (README "CLI"). A failure is one
line on stderr and a non-zero exit code, never a traceback:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     the command ran and found a problem (doctor unhealthy, checkpoint busy ...)
2     bad arguments or a bad input file
3     no usable database (missing, not a database, newer schema, cannot open)
4     the database stayed locked by other processes past ``--timeout``
5     unknown session id
-     ended by SIGINT (Ctrl+C) or SIGTERM: a shell sees 130 or 143, ``Popen`` -2 or -15
====  ==========================================================================

Only ``demo``, ``run`` and ``new`` create a database; every other command checks first that the
path is an existing sessionstore database, and a command that fails leaves the file byte-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NoReturn, get_args

from .. import __version__
from .._enums import EventLevel, SessionStatus
from .._interrupt import install_quiet_interrupt
from ..errors import (
    InvalidTransitionError,
    SchemaVersionError,
    SessionNotFoundError,
    SessionStoreError,
    StoreBusyError,
    StoreCorruptError,
    StoreOpenError,
)
from ._common import (
    DEFAULT_DB,
    ENV_DB,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_NO_DB,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    Output,
    UsageError,
    one_line,
    resolve_db,
)

__all__ = ["build_parser", "main"]

# The stress harness's own default database, beside the embedded one but never the same file.
STRESS_DEFAULT_DB = os.path.join(".sessionstore", "stress.db")

Handler = Callable[[argparse.Namespace, Output], int]

_MAX_PAGE = 10_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, so ``main`` reports it like the rest)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("sessionstore").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see --help)")


# Upper bounds for durations: a typo'd `--grace 1e308` must be refused, not hang the program.
MAX_TIMEOUT_S = 600.0  # SQLite's busy timeout as the store accepts it (StoreConfig)
MAX_SECONDS = 86_400.0


def _seconds(high: float, *, zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        low_ok = value >= 0 if zero else value > 0
        if not low_ok or not value <= high:  # also refuses nan and inf
            low = "0" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {low} and at most {high:g} s: {text!r}")
        return value

    parse.__name__ = "seconds"
    return parse


_positive_float = _seconds(MAX_SECONDS)
_grace = _seconds(3600.0, zero=True)
_LEVELS = list(get_args(EventLevel))

_EPILOG = f"""\
database: --db, else ${ENV_DB}, else {DEFAULT_DB} in the working directory.

environment:
  {ENV_DB}     the database file
  SESSIONSTORE_SESSION  set by `run` for the command: its session id
  SESSIONSTORE_DEBUG    print a traceback for an internal error

exit codes:
  0    success (a hook write that was journaled instead of applied is a success)
  1    the command ran and found a problem (doctor unhealthy, owner did not end ...)
  2    bad arguments or a bad input file
  3    no usable database (missing, not a database, newer schema, cannot open)
  4    the database stayed locked by other processes past --timeout
  5    unknown session
  6    a hook write could be neither applied nor journaled
  126  run: the command cannot be executed; 127: not found
  128+N  ended by signal N (run passes on the command's or its own)

SESSION may be a full id, a unique id prefix, or a session name.
With --json, stdout is JSON (streams: JSON Lines) and every stderr line is a JSON
object: {{"event": "error", "error": KIND, "message": ..., "exit_code": N}} on failure.
Times are epoch seconds, each with an RFC 3339 UTC text beside it (KEY_rfc3339).
"""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _time_arg(text: str) -> float:
    """An epoch time from ISO 8601 (naive = local time) or ``<number><s|m|h|d|w>`` ago."""
    text = text.strip()
    if text[-1:] in _UNITS:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = -1.0
        if 0 <= amount <= 10**6:
            return time.time() - amount * _UNITS[text[-1]]
    try:
        # 3.10's fromisoformat does not read a trailing Z.
        stamp = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 like 2024-05-01T12:00, or 30s, 10m, 2h, 3d)"
        ) from None
    return stamp.timestamp()


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}: {text!r}")
        return value

    return parse


def _lazy(module: str, name: str) -> Handler:
    # Commands import their module when they run: `status` must not pay for the demo's or the
    # process layer's imports.
    def run(args: argparse.Namespace, out: Output) -> int:
        handler: Handler = getattr(importlib.import_module(module, __package__), name)
        return handler(args, out)

    return run


def _common_options() -> _Parser:
    # Accepted before or after the command. SUPPRESS keeps a subcommand from overwriting a value
    # given before it with its own default.
    common = _Parser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help="the database file")
    common.add_argument(
        "--timeout",
        type=_seconds(MAX_TIMEOUT_S),
        default=argparse.SUPPRESS,
        help="lock wait (stop/pause/kill: wait for the owner), seconds",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="sessionstore",
        description="Sessions in one SQLite file shared by processes, and an ordered shutdown.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db", default=None, help=f"the database file (default: ${ENV_DB} or {DEFAULT_DB})"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds(MAX_TIMEOUT_S),
        default=None,
        help="how long to wait for other processes' locks, seconds (default 5); for "
        "stop/pause/kill how long to wait for the owner to end (default 30)",
    )
    parser.add_argument("--version", action="version", version=f"sessionstore {__version__}")
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="log the store's info lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_common_options()]

    def add(
        name: str, handler: Handler, help_text: str, *, timeout: float = 5.0
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=common, help=help_text, description=help_text)
        p.set_defaults(handler=handler, default_timeout=timeout)
        return p

    p = add("demo", _lazy("._demo", "cmd_demo"), "run a small orchestrator and shut it down")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="run time (default 5)")
    p.add_argument("--grace", type=_grace, default=1.0, help="SIGTERM->SIGKILL grace (default 1)")

    p = add("run", _lazy("._run", "cmd_run"), "run CMD under the process layer (after --)")
    p.add_argument("--name", help="session name (default: the command's file name)")
    p.add_argument(
        "--grace", type=_grace, default=5.0, help="SIGTERM->SIGKILL grace at the end (default 5)"
    )
    p.add_argument("--session", metavar="SESSION", help="continue this session (id/prefix/name)")
    p.add_argument("-q", "--quiet", action="store_true", help="no start/end lines on stderr")
    p.add_argument(
        "--heartbeat",
        type=_seconds(3600.0),
        default=10.0,
        help="heartbeat interval while the command runs (default 10 s)",
    )
    p.set_defaults(cmd=[])

    for name, help_text in (
        ("stop", "end a session's owner gracefully (SIGTERM); session stopped"),
        ("pause", "end a session's owner gracefully; session paused (resumable)"),
        ("kill", "end a session's owner without grace; orphans reaped"),
    ):
        p = add(name, _lazy("._control", f"cmd_{name}"), help_text, timeout=30.0)
        p.add_argument("session", metavar="SESSION")
        p.add_argument("--reap", action="store_true", help="end the orphans of dead owners")
        p.add_argument("--grace", type=_grace, default=5.0, help="grace when reaping (default 5)")
    p = add("new", _lazy("._control", "cmd_new"), "create an empty database at PATH")
    p.add_argument("path", metavar="PATH")
    p = add("complete", _lazy("._control", "cmd_complete"), "mark a session completed")
    p.add_argument("session", metavar="SESSION")

    p = add("log", _lazy("._hooks", "cmd_log"), "hook: append an event (bounded write)")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("message", metavar="MESSAGE")
    p.add_argument("--level", choices=_LEVELS, default="info", help="default info")
    p.add_argument("--data", metavar="JSON|@FILE", help="event data: JSON, @file or @- (stdin)")
    p = add("heartbeat", _lazy("._hooks", "cmd_heartbeat"), "hook: the owner is alive now")
    p.add_argument("session", metavar="SESSION")
    p = add("child", _lazy("._hooks", "cmd_child_add"), "hook: record a child's start/end")
    child = p.add_subparsers(dest="child_action", metavar="ACTION", required=True)
    c = child.add_parser("add", parents=common, help="record a running process")
    c.set_defaults(handler=_lazy("._hooks", "cmd_child_add"))
    c.add_argument("session", metavar="SESSION")
    c.add_argument("pid", type=_int_range(2, 2**31 - 1), metavar="PID")
    c = child.add_parser("remove", parents=common, help="record that a child ended")
    c.set_defaults(handler=_lazy("._hooks", "cmd_child_remove"))
    c.add_argument("session", metavar="SESSION")
    c.add_argument("pid", type=_int_range(2, 2**31 - 1), metavar="PID")
    c.add_argument("--exit-code", type=_int_range(-255, 255), default=None)

    p = add("status", _lazy("._status", "cmd_status"), "sessions, staleness, file sizes")
    p.add_argument(
        "--stale-after",
        type=_positive_float,
        default=60.0,
        help="an active session silent this long is stale (seconds, default 60)",
    )

    p = add("sessions", _lazy("._commands", "cmd_sessions"), "list sessions")
    p.add_argument("--status", choices=[s.value for s in SessionStatus], help="only this status")
    p.add_argument("--name", help="only sessions of this name")
    p.add_argument(
        "--since", type=_time_arg, help="created since: ISO 8601 or relative (30s, 10m, 2h, 3d)"
    )
    p.add_argument("--limit", type=_int_range(0, 10**9), help="only the newest N")

    p = add("show", _lazy("._commands", "cmd_show"), "one session in detail")
    p.add_argument("session", metavar="SESSION")
    p.add_argument(
        "--events", type=_int_range(1, _MAX_PAGE), default=10, help="recent events (default 10)"
    )

    p = add("events", _lazy("._commands", "cmd_events"), "a session's events")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--after", type=_int_range(0, 2**63 - 1), default=None, help="after this id")
    p.add_argument("--limit", type=_int_range(1, _MAX_PAGE), default=100, help="default 100")
    p.add_argument(
        "-n",
        "--lines",
        type=_int_range(0, _MAX_PAGE),
        default=None,
        help="only the latest N (with --follow: N before following, default 10)",
    )
    p.add_argument(
        "--since", type=_time_arg, help="written at or after: ISO 8601 or an age (30s, 10m, 2h)"
    )
    p.add_argument("--until", type=_time_arg, help="written before: ISO 8601 or an age")
    p.add_argument("--level", choices=_LEVELS, help="only this level and more severe ones")
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events (like tail -f)"
    )
    p.add_argument(
        "--follow-timeout", type=_positive_float, default=None, help="stop following after S s"
    )
    p.add_argument(
        "--interval", type=_positive_float, default=0.5, help="poll interval (default 0.5 s)"
    )

    p = add("children", _lazy("._commands", "cmd_children"), "recorded child processes")
    p.add_argument("--session", metavar="SESSION", help="only this session's")
    p.add_argument("--alive", action="store_true", help="only those alive now")
    p.add_argument("--all", action="store_true", help="include the ones that ended")

    p = add(
        "checkpoint",
        _lazy("._admin", "cmd_checkpoint"),
        "TRUNCATE the WAL now; `checkpoint save` saves a session checkpoint",
    )
    cps = p.add_subparsers(dest="checkpoint_action", metavar="save", required=False)
    c = cps.add_parser("save", parents=common, help="hook: save a named JSON checkpoint")
    c.set_defaults(handler=_lazy("._hooks", "cmd_checkpoint_save"))
    c.add_argument("session", metavar="SESSION")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--data", required=True, metavar="JSON|@FILE", help="JSON, @file or @-")
    add("doctor", _lazy("._admin", "cmd_doctor"), "check health; exit 1 when unhealthy")
    add("replay", _lazy("._admin", "cmd_replay"), "apply the op journal now")
    p = add("resume", _lazy("._admin", "cmd_resume"), "make a session active again")
    p.add_argument("session", metavar="SESSION")

    p = add("export", _lazy("._transfer", "cmd_export"), "one session as a JSON document")
    p.add_argument("session", metavar="SESSION")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p = add("import", _lazy("._transfer", "cmd_import"), "import an export (idempotent)")
    p.add_argument("file", metavar="FILE", help="an export document, or - for stdin")

    p = add(
        "prune",
        _lazy("._maintain", "cmd_prune"),
        "delete sessions that ended before a time, with their events, checkpoints and children",
    )
    p.add_argument(
        "--older-than",
        type=_time_arg,
        required=True,
        metavar="TIME",
        help="ended before this: ISO 8601 or an age (30m, 12h, 7d, 4w)",
    )
    add("vacuum", _lazy("._maintain", "cmd_vacuum"), "rebuild the database file compactly")
    p = add("backup", _lazy("._maintain", "cmd_backup"), "online copy of the database to DEST")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--force", action="store_true", help="replace an existing DEST")

    p = add("reap", _lazy("._admin", "cmd_reap"), "end orphans of dead orchestrators")
    p.add_argument("--dry-run", action="store_true", help="only report what would be ended")

    # stress parses its own options (sessionstore.stress owns them): everything after the
    # command is handed over as it is.
    p = sub.add_parser("stress", help="the multi-process exit-storm harness", add_help=False)
    p.set_defaults(handler=_cmd_stress)
    return parser


def _cmd_stress(args: argparse.Namespace, out: Output) -> int:
    try:
        stress = importlib.import_module("..stress", __package__)
    except ModuleNotFoundError as err:
        if err.name != "sessionstore.stress":
            raise
        raise CliError("the stress harness (sessionstore.stress) is not in this build") from None
    add_arguments = getattr(stress, "add_cli_arguments", None)
    cli_main = getattr(stress, "cli_main", None)
    if not callable(add_arguments) or not callable(cli_main):
        raise CliError("sessionstore.stress has no add_cli_arguments/cli_main entry point")
    parser = _Parser(prog="sessionstore stress", description="The exit-storm harness.")
    add_arguments(parser)
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument("--db", default=None, help="the database file")
    # A --json given before `stress` carries over (the harness's own default is SUPPRESS).
    stress_args = parser.parse_args(args.rest, namespace=argparse.Namespace(json=args.json))
    explicit = getattr(stress_args, "db", None) or args.db or os.environ.get(ENV_DB)
    if explicit:
        db = resolve_db(explicit)
    else:
        # Never the operators' own database by default: a storm adds sessions by the dozen.
        os.makedirs(os.path.dirname(STRESS_DEFAULT_DB), exist_ok=True)
        db = STRESS_DEFAULT_DB
    return int(cli_main(stress_args, db))


class _JsonLines(logging.Formatter):
    """Under ``--json`` a log record is a JSON line too, so stderr stays machine-readable."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"event": "log", "level": record.levelname.lower(), "message": record.getMessage()}
        )


def _setup_logging(verbose: bool, as_json: bool = False) -> None:
    # One line per record on stderr; stdout stays the command's (JSON) result.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines() if as_json else logging.Formatter("sessionstore: %(levelname)s: %(message)s")
    )
    log = logging.getLogger("sessionstore")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


def _error_code(err: BaseException) -> int:
    if isinstance(err, CliError):
        return err.exit_code
    if isinstance(err, SessionNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(err, StoreBusyError):
        return EXIT_BUSY
    if isinstance(err, StoreCorruptError | StoreOpenError | SchemaVersionError):
        return EXIT_NO_DB
    if isinstance(err, ValueError):
        # pydantic's ValidationError, or an UnsafeSignalError (a pid no process can have):
        # input the store refused, before the catch-all for its other errors below.
        return EXIT_USAGE
    if isinstance(err, InvalidTransitionError | SessionStoreError):
        return EXIT_FAILED
    return EXIT_FAILED


# The "error" key of a JSON error: one stable word per exit code (README "JSON output").
_ERROR_KINDS = {
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_NO_DB: "no_database",
    EXIT_BUSY: "busy",
    EXIT_NOT_FOUND: "not_found",
    6: "not_recorded",  # _hooks.EXIT_NOT_RECORDED (not imported here: start-up time)
}


def _report(message: str, err: BaseException, as_json: bool) -> None:
    # Under --json the error is one JSON object on stderr (README "JSON output"), so a program
    # reading our streams never meets plain text or a traceback there.
    if as_json:
        code = _error_code(err)
        line = json.dumps(
            {
                "event": "error",
                "error": _ERROR_KINDS.get(code, "failed"),
                "type": type(err).__name__,
                "message": message,
                "exit_code": code,
            },
            ensure_ascii=False,
        )
    else:
        line = f"sessionstore: error: {message}"
    with contextlib.suppress(OSError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _wants_json(argv: list[str], args: argparse.Namespace | None) -> bool:
    if args is not None:
        return bool(getattr(args, "json", False))
    # The arguments did not parse: look for the flag itself (before a `run` command's `--`).
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def _quiet_stdout() -> None:
    # The reader of our stdout went away (`| head`): stop writing to it, without a second
    # BrokenPipeError when Python flushes stdout at exit.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _parse(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace, list[str]]:
    # `run OPTIONS -- CMD ARGS...`: everything after the first `--` is the command, untouched
    # (its own options must never be read as ours). Rejected: argparse.REMAINDER, whose
    # handling of `--` changed between the Python versions we support.
    if "--" in argv:
        cut = argv.index("--")
        args, rest = parser.parse_known_args(argv[:cut])
        if args.command == "run":
            args.cmd = argv[cut + 1 :]
            return args, rest
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code (see the module docstring). The ``demo`` does not return when a signal
        ended it: the process dies by that signal, so a shell sees 130 or 143.

    Raises:
        KeyboardInterrupt: Ctrl+C, from wherever it landed, after the command's own clean-up
            (its stores closed on the way out). Never caught here: the entry points
            (:func:`entry`, ``python -m sessionstore``) leave it to CPython, which ends the
            process by SIGINT after ``atexit`` and with no traceback
            (:mod:`sessionstore._interrupt`). An in-process caller gets it as any call would.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    try:
        args, rest = _parse(parser, argv)
        args.rest = rest
        if rest and args.command != "stress":
            raise UsageError(f"{args.command}: unrecognized arguments: {' '.join(rest)}")
        if args.timeout is None:
            args.timeout = getattr(args, "default_timeout", 5.0)
        _setup_logging(args.verbose, bool(getattr(args, "json", False)))
        handler: Handler = args.handler
        return handler(args, Output.for_args(args))
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_FAILED
    except Exception as err:
        as_json = _wants_json(argv, args)
        if isinstance(err, CliError | SessionStoreError):
            _report(one_line(str(err)), err, as_json)
        elif isinstance(err, ValueError):
            _report(f"invalid input: {one_line(str(err))}", err, as_json)
        elif isinstance(err, OSError):
            where = f": {err.filename}" if err.filename else ""
            _report(f"{err.strerror or err}{where}", err, as_json)
        else:
            # A bug: still one line, with the way to see more.
            if os.environ.get("SESSIONSTORE_DEBUG"):
                raise
            _report(
                f"internal error: {type(err).__name__}: {one_line(str(err))} "
                "(set SESSIONSTORE_DEBUG=1 for a traceback)",
                err,
                as_json,
            )
        return _error_code(err)


def entry() -> int:
    """The ``sessionstore`` console script: :func:`main`, ended by SIGINT on Ctrl+C.

    Raises:
        KeyboardInterrupt: see :func:`main`; uncaught, it ends the process by SIGINT.
    """
    install_quiet_interrupt()
    return main()
