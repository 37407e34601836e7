"""What every CLI command shares: the database path, the pre-open checks, output and errors.

The store's ``open()`` creates a missing file and brings any SQLite file's schema up to date, which
is right for a program embedding it and wrong for an operator's tool: ``status`` against a typo'd
path must not leave a new database behind, and pointing the CLI at some other application's
SQLite file must not add our tables to it. So every command but ``demo`` first proves, through a
read-only connection, that the path is an existing sessionstore database (:func:`check_database`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import (
    ForeignDatabaseError,
    SchemaVersionError,
    StoreBusyError,
    StoreCorruptError,
    StoreOpenError,
)

# The store (pydantic, apsw) is imported by the functions that use it, not here: the parser
# (``_main``) imports this module, and ``--help``, ``--version`` or a usage error should not
# pay 100-150 ms for a store they never open. A command's own module imports the store at its
# top, so the cost is paid before any command starts its clock (``_hooks``' ``--timeout``).
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .._config import StoreConfig
    from .._store import SessionStore

__all__ = [
    "DEFAULT_DB",
    "ENV_DB",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_NO_DB",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Output",
    "UsageError",
    "check_database",
    "dump",
    "escape_markup",
    "fmt_age",
    "fmt_bytes",
    "fmt_time",
    "one_line",
    "open_store",
    "quiet_store_warnings",
    "resolve_db",
    "rfc3339",
    "simple_table",
    "store_config",
    "with_rfc3339",
]

DEFAULT_DB = os.path.join(".sessionstore", "sessions.db")
"""The embedded default: a database under the working directory, like ``.git``."""

ENV_DB = "SESSIONSTORE_DB"

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (doctor unhealthy, checkpoint busy ...)
EXIT_USAGE = 2  # bad arguments or a bad input file; argparse's own code for usage errors
EXIT_NO_DB = 3  # no usable database: missing, not a database, newer schema, cannot open
EXIT_BUSY = 4  # locked by other processes past --timeout
EXIT_NOT_FOUND = 5  # unknown session id


class CliError(Exception):
    """A failure the CLI reports as one line on stderr with a specific exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        self.exit_code = exit_code
        super().__init__(message)


class UsageError(CliError):
    """Bad arguments (argparse's), reported with exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def one_line(text: str) -> str:
    """Collapse a possibly multi-line message (pydantic's are) into one readable line."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    return "; ".join(p for p in parts if p)


def resolve_db(arg: str | None) -> str:
    """The database path: ``--db``, else ``$SESSIONSTORE_DB``, else the embedded default."""
    if arg:
        return arg
    return os.environ.get(ENV_DB) or DEFAULT_DB


def check_database(path: str, timeout_s: float) -> None:
    """Prove ``path`` is an existing sessionstore database without writing to it.

    Args:
        path: the database file.
        timeout_s: how long to wait for another process's lock.

    Raises:
        CliError: missing, not a file, empty, not SQLite, not sessionstore's, newer schema
            (exit 3), or locked past ``timeout_s`` (exit 4). The file is never modified.
    """
    hint = "`sessionstore new PATH` creates one; pass --db PATH or set SESSIONSTORE_DB"
    if not os.path.exists(path):
        raise CliError(f"no database at {path} ({hint})", EXIT_NO_DB)
    if not os.path.isfile(path):
        raise CliError(f"{path} is not a file", EXIT_NO_DB)
    if os.path.getsize(path) == 0:
        # SQLite would happily treat an empty file as a new database and write our schema in.
        raise CliError(f"{path} is empty, not a sessionstore database ({hint})", EXIT_NO_DB)
    from .._migrate import FileKind, identify

    try:
        kind = identify(path, busy_timeout_ms=int(timeout_s * 1000))
    except StoreBusyError as err:
        raise CliError(
            f"{path} is locked by another process (waited {timeout_s:g} s; see --timeout)",
            EXIT_BUSY,
        ) from err
    except (ForeignDatabaseError, SchemaVersionError) as err:
        raise CliError(str(err), EXIT_NO_DB) from err  # each says the file was left untouched
    except (StoreOpenError, StoreCorruptError) as err:
        raise CliError(f"{err} (left untouched)", EXIT_NO_DB) from err
    if kind is FileKind.NEW:
        raise CliError(
            f"{path} is a SQLite database but not a sessionstore one (left untouched)", EXIT_NO_DB
        )


def store_config(timeout_s: float) -> StoreConfig:
    """The config every CLI command but ``demo`` opens the store with.

    No journal replay at open: it writes, and a command that then fails (an unknown session id)
    must leave the file as it found it; ``replay`` and ``resume`` apply the journal explicitly
    and report it. No background checkpointer: a short-lived tool should not schedule work on
    a database other processes own (close still runs its one TRUNCATE, which changes no content).

    Args:
        timeout_s: how long to wait for other processes' locks (busy timeout and retry deadline).
    """
    from .._config import StoreConfig

    return StoreConfig(
        busy_timeout_ms=int(timeout_s * 1000),
        write_deadline_s=max(timeout_s, 0.001),
        replay_on_open=False,
        checkpointing=False,
        close_timeout_s=min(timeout_s, 5.0),
        read_connections=1,
    )


@contextlib.contextmanager
def open_store(
    path: str,
    timeout_s: float,
    *,
    config: StoreConfig | None = None,
    read_only: bool = False,
) -> Iterator[SessionStore]:
    """Check that ``path`` is a sessionstore database, open it, and close it afterwards.

    Args:
        path: the database file.
        timeout_s: how long to wait for other processes' locks.
        config: the store settings; default :func:`store_config` of ``timeout_s``.
        read_only: for commands that only read: the store writes nothing at all, not even
            ``-wal``/``-shm`` (another user can run them on a shared database).

    Raises:
        CliError: see :func:`check_database`.
        SessionStoreError: from :meth:`SessionStore.open`.
    """
    from .._store import SessionStore

    check_database(path, timeout_s)
    store = SessionStore.open(path, config=config or store_config(timeout_s), read_only=read_only)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def quiet_store_warnings(verbose: bool) -> Iterator[None]:
    """Hold back the store's own warnings (a journaled op) where the command reports it itself.

    One line per outcome: without this, a journaled write printed the store's warning and then
    the command's own line about the same op.
    """
    log = logging.getLogger("sessionstore")
    level = log.level
    if not verbose:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def dump(value: Any) -> Any:
    """A JSON-ready form of a pydantic model (or a list/dict of them)."""
    # Until pydantic.main is imported no value can be a model, and importing it here would
    # cost `status` (which reads plain rows) a quarter of its start-up.
    pydantic_main = sys.modules.get("pydantic.main")
    if pydantic_main is not None and isinstance(value, pydantic_main.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


# rich is imported by the human renderings only (``Output.console``): ``--json`` never loads it.
def escape_markup(text: str) -> str:
    """``text`` with rich markup escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def simple_table() -> Table:
    """A rich table in the CLI's one style: simple rules, no outer edge."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE, show_edge=False)


def fmt_time(ts: float | None) -> str:
    """A local wall-clock time for humans, or ``-``."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def rfc3339(ts: float | None) -> str | None:
    """An epoch time as RFC 3339 in UTC with a ``Z`` (``2024-05-01T12:00:00.123456Z``), or None.

    Printed beside the epoch number in JSON: machines compare the number, people and log tools
    read the text. Rejected: local time with an offset, which differs between two hosts
    reading the same database.
    """
    if ts is None:
        return None
    stamp = datetime.fromtimestamp(ts, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_rfc3339(value: Any) -> Any:
    """``value`` with ``<key>_rfc3339`` added beside every numeric ``<key>`` ending in ``_at``.

    One rule for every command, applied where JSON is printed, so no command can forget it.
    Rejected: replacing the numbers by text, which would break every reader of the epoch keys.
    """
    if isinstance(value, list):
        return [with_rfc3339(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        out[key] = with_rfc3339(v)
        if key.endswith("_at") and (
            v is None or (isinstance(v, int | float) and not isinstance(v, bool))
        ):
            out[f"{key}_rfc3339"] = None if v is None else _rfc3339_or_none(float(v))
    return out


def _rfc3339_or_none(ts: float) -> str | None:
    try:
        return rfc3339(ts)
    except (OverflowError, OSError, ValueError):
        return None  # out of datetime's range: the number stays the truth


def fmt_age(seconds: float | None) -> str:
    """``3.2s``, ``4m05s``, ``2h10m``, ``3d04h`` or ``-``."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def fmt_bytes(n: int) -> str:
    """``512 B``, ``4.0 KiB``, ``3.5 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass
class Output:
    """Where a command's result goes: one JSON document on stdout, or rich text for humans.

    rich is imported when a command first asks for :attr:`console`, not before: ``--json``
    output, the hooks and the errors never render with it, and importing it cost a hook 20 ms
    (a quarter of its start-up). Rejected: a Console made up front (what that cost paid for).
    """

    json_mode: bool
    _console: Console | None = field(default=None, repr=False)

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Output:
        """The output for parsed arguments (``--json`` selects JSON)."""
        return cls(json_mode=bool(getattr(args, "json", False)))

    @property
    def console(self) -> Console:
        """The rich console for human output, made on first use (rich imported then)."""
        if self._console is None:
            from rich.console import Console

            console = Console(highlight=False)
            if not console.is_terminal:
                # Logs and pipes: wide enough that ids and paths do not wrap mid-word.
                console = Console(highlight=False, width=int(os.environ.get("COLUMNS", "160")))
            self._console = console
        return self._console

    def result(self, data: dict[str, Any], human: Callable[[Console], None]) -> None:
        """Print ``data`` as JSON, or call ``human`` to render it for a person."""
        if self.json_mode:
            self.json(data)
        else:
            human(self.console)

    def warn(self, message: str, **fields: Any) -> None:
        """One line on stderr about the outcome: text, or with ``--json`` a JSON object.

        The JSON form is ``{"event": "warning", "message": ..., **fields}``, the shape of every
        line the CLI writes on stderr under ``--json`` (``log``, ``warning``, ``error``).
        """
        if self.json_mode:
            line = json.dumps({"event": "warning", "message": message, **dump(fields)})
        else:
            line = f"sessionstore: {message}"
        with contextlib.suppress(OSError):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def json(self, data: Any, *, indent: int | None = 2) -> None:
        """Print one JSON document (or one JSON line with ``indent=None``) and flush.

        Every epoch time (a key ending in ``_at``) gets its RFC 3339 text beside it, under the
        same key plus ``_rfc3339`` (README "JSON output").
        """
        doc = with_rfc3339(dump(data))
        sys.stdout.write(json.dumps(doc, indent=indent, ensure_ascii=False) + "\n")
        sys.stdout.flush()
